// The comparison view (/ui/compare): every succeeded job of the tenant (GET /v1/jobs?status=succeeded,
// all pages up to MAX_JOBS), its student's test accuracy against its size (parameters, or CPU latency),
// the teachers marked (one point per teacher file), the baselines optionally. A table lists the same
// points, smallest first.
"use strict";
const MAX_JOBS = 1000;
let compareJobs = [];

async function loadSucceeded() {
  const out = [];
  let after = null, more = true;
  while (more && out.length < MAX_JOBS) {
    const q = new URLSearchParams({status: "succeeded", limit: "100"});
    if (after) q.set("after", after);
    const page = await apiJson("/v1/jobs?" + q);
    out.push(...page.data);
    more = page.has_more;
    after = page.data.length ? page.data[page.data.length - 1].id : null;
    if (!after) break;
  }
  return {jobs: out, truncated: more};
}

function modelPoints(axis) {
  const students = [], baselines = [], teachers = new Map();
  let unscored = 0;
  for (const j of compareJobs) {
    const r = j.result || {}, s = r.student || {}, t = r.teacher || {}, b = r.baseline;
    const href = "/ui/jobs/" + encodeURIComponent(j.id), name = studentLabel(j.spec);
    const sx = axis === "parameters" ? s.parameters : s.latency_ms;
    if (typeof s.accuracy !== "number") { unscored++; continue; }
    students.push({x: sx, y: s.accuracy, href, job: j, kind: "student", name, gain: r.distillation_gain,
      label: name + " (" + j.id + "): " + pct(s.accuracy) + ", " + count(s.parameters) + " parameters"});
    if (b && typeof b.accuracy === "number") baselines.push({x: sx, y: b.accuracy, href, job: j, kind: "baseline",
      name: name + " from scratch", label: name + " without the teacher (" + j.id + "): " + pct(b.accuracy)});
    const teacherKey = ((j.spec || {}).teacher || {}).file_id || j.id;
    if (typeof t.accuracy === "number" && !teachers.has(teacherKey)) {
      const tname = teacherLabel(j.spec);
      teachers.set(teacherKey, {x: axis === "parameters" ? t.parameters : t.latency_ms, y: t.accuracy, href, job: j,
        kind: "teacher", name: tname, label: "teacher " + tname + " (" + teacherKey + "): " + pct(t.accuracy) + ", " + count(t.parameters) + " parameters"});
    }
  }
  return {students, baselines, teachers: [...teachers.values()], unscored};
}

function drawCompare() {
  const axis = $("x-axis").value, showBaselines = $("show-baselines").checked;
  const {students, baselines, teachers, unscored} = modelPoints(axis);
  const groups = [{name: "● distilled student", cls: "student", shape: "circle", points: students},
    {name: "◆ teacher", cls: "teacher", shape: "diamond", points: teachers}];
  if (showBaselines) groups.push({name: "□ same student from scratch", cls: "baseline", shape: "square", hollow: true, points: baselines});
  scatterChart($("scatter"), groups, {xLabel: axis === "parameters" ? "parameters (log scale)" : "CPU latency, ms per batch of 64 (log scale)",
    yLabel: "accuracy", xFormat: (v) => (axis === "parameters" ? count(v) : +v.toPrecision(2) + ""),
    yFormat: (v) => (v * 100).toFixed(0) + "%", empty: "No succeeded job with an accuracy yet"});
  const rows = [...students, ...teachers, ...(showBaselines ? baselines : [])]
    .sort((a, b) => (a.x ?? Infinity) - (b.x ?? Infinity) || b.y - a.y);
  $("compare-table").querySelector("tbody").replaceChildren(...rows.map((p) => {
    const r = p.job.result || {}, m = p.kind === "teacher" ? r.teacher || {} : r.student || {};
    return el("tr", {class: "kind-" + p.kind},
      el("td", {"data-label": "Model", text: p.kind + ": " + p.name}),
      el("td", {"data-label": "Job"}, el("a", {href: p.href, text: p.job.id})),
      el("td", {class: "num", "data-label": "Parameters", text: count(m.parameters) || ""}),
      el("td", {class: "num", "data-label": "Latency", text: m.latency_ms != null ? m.latency_ms.toFixed(3) + " ms" : ""}),
      el("td", {class: "num", "data-label": "Accuracy", text: pct(p.y) || ""}),
      el("td", {class: "num", "data-label": "Gain", text: p.kind === "student" ? points(p.gain) || "" : ""}));
  }));
  const notes = [students.length + " student" + (students.length === 1 ? "" : "s") + ", " + teachers.length + " teacher" + (teachers.length === 1 ? "" : "s") + "."];
  if (unscored) notes.push(unscored + " job" + (unscored === 1 ? " was" : "s were") + " evaluated on inputs without labels (no accuracy) and " + (unscored === 1 ? "is" : "are") + " not shown.");
  if (compareJobs.truncated) notes.push("Only the newest " + MAX_JOBS + " succeeded jobs are shown.");
  $("compare-note").textContent = notes.join(" ");
}

async function startPage() {
  $("x-axis").onchange = drawCompare;
  window.addEventListener("resize", () => { if (compareJobs.length) drawCompare(); });
  $("show-baselines").onchange = drawCompare;
  try {
    const {jobs, truncated} = await loadSucceeded();
    compareJobs = jobs;
    compareJobs.truncated = truncated;
    drawCompare();
  } catch (e) { showError(e.message); }
}
