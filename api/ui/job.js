// One job (/ui/jobs/{id}). Its events come from the SSE stream GET /v1/jobs/{id}/events (read with
// fetch, since EventSource cannot send the Bearer header): every event joins the log, and each `epoch`
// event (the epoch's metrics) adds a point to the loss and accuracy charts as it happens. The job itself
// (status, progress, result) is read again when an event says something changed, and every 2 s while it
// is queued or running (progress within an epoch and the ETA are not events).
"use strict";
const TERMINAL = ["succeeded", "failed", "cancelled"];
const jobState = {id: null, job: null, events: [], series: new Map(), lastEventId: 0, reportShown: false,
  linksShown: false, unknown: false, timer: null, drawPending: false, refreshPending: false};

// --- the live stream -----------------------------------------------------------------------------
function parseSse(block) {  // one "id:/event:/data:" block -> the event JSON, or null (comment, retry)
  let data = "";
  for (const line of block.split("\n")) if (line.startsWith("data:")) data += line.slice(5).trimStart();
  return data ? JSON.parse(data) : null;
}

async function followEvents() {
  const controller = new AbortController();
  window.addEventListener("pagehide", () => controller.abort());
  for (;;) {
    try {
      const r = await api(jobPath(jobState.id, "/events?after=" + jobState.lastEventId),
        {headers: {Accept: "text/event-stream"}, signal: controller.signal});
      if (jobState.streamError) { jobState.streamError = false; showError(""); }
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const ev = parseSse(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (ev && ev.id > jobState.lastEventId) { jobState.lastEventId = ev.id; onEvent(ev); }
        }
      }
    } catch (e) {
      if (controller.signal.aborted || e.status === 401) return;
      if (e.status === 404) { showUnknown(); return; }
      // 429 (too many open streams), a restart, a dropped connection: try again shortly
      if (e.status === 429) { jobState.streamError = true; showError("Live updates paused: " + e.message + " Retrying…"); }
      await new Promise((r) => setTimeout(r, 3000));
      continue;
    }
    // the server ends the stream once the job has finished and every event was sent
    await refreshJob();
    if (jobState.job && TERMINAL.includes(jobState.job.status)) return;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function onEvent(ev) {
  jobState.events.push(ev);
  appendEvent(ev);
  // `epoch`: a run's epoch (student, baseline; in a sweep, the chosen point's once it is picked);
  // `sweep_epoch`: an epoch of one sweep point, with its T and α
  if ((ev.type === "epoch" || ev.type === "sweep_epoch") && ev.data) {
    const d = ev.data;
    const name = ev.type === "sweep_epoch" ? d.run + " T=" + d.temperature + " α=" + d.alpha : d.run;
    if (!jobState.series.has(name)) jobState.series.set(name, {loss: new Map(), accuracy: new Map(), run: d.run});
    const s = jobState.series.get(name);
    if (typeof d.train_loss === "number") s.loss.set(d.epoch, d.train_loss);
    const acc = typeof d.val_accuracy === "number" ? d.val_accuracy : d.val_agreement;
    if (typeof acc === "number") s.accuracy.set(d.epoch, acc);
    scheduleDraw();
  }
  if (["status", "phase", "result", "stopped", "checkpoint", "claimed"].includes(ev.type)) scheduleRefresh();
}

function scheduleDraw() {
  if (jobState.drawPending) return;
  jobState.drawPending = true;
  requestAnimationFrame(() => { jobState.drawPending = false; drawCharts(); });
}
function scheduleRefresh() {
  if (jobState.refreshPending) return;
  jobState.refreshPending = true;
  setTimeout(() => { jobState.refreshPending = false; refreshJob(); }, 300);
}

function drawCharts() {
  // no empty charts before a job runs or after one ended without an epoch: they appear with the
  // first epoch, or (saying "no epochs yet") while it runs
  const job = jobState.job || {};
  document.querySelector(".charts").hidden = !jobState.series.size && !["running", "cancelling"].includes(job.status);
  const series = (key) => [...jobState.series.entries()].map(([name, s]) => ({name, cls: "run-" + s.run,
    points: [...s[key].entries()]}));
  lineChart($("chart-loss"), series("loss"), {yLabel: "loss"});
  lineChart($("chart-accuracy"), series("accuracy"), {yLabel: "accuracy", yFormat: (v) => (v * 100).toFixed(0) + "%"});
}

function appendEvent(ev) {
  const li = el("li", {class: "level-" + ev.level, dataset: {type: ev.type}},
    el("time", {datetime: ev.created_at, title: stamp(ev.created_at), text: new Date(ev.created_at).toLocaleTimeString()}),
    el("span", {class: "type", text: ev.type}), el("span", {class: "message", text: ev.message}));
  const list = $("events"), atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

// --- the job -------------------------------------------------------------------------------------
async function refreshJob() {
  try {
    jobState.job = await apiJson(jobPath(jobState.id));
  } catch (e) {
    if (e.status === 404) showUnknown(); else { jobState.refreshError = true; showError(e.message); }
    return;
  }
  if (jobState.refreshError) { jobState.refreshError = false; showError(""); }  // it was passing
  render(jobState.job);
  if (TERMINAL.includes(jobState.job.status) && jobState.timer) { clearInterval(jobState.timer); jobState.timer = null; }
}

function showUnknown() {
  if (jobState.unknown) return;
  jobState.unknown = true;
  if (jobState.timer) clearInterval(jobState.timer);
  setBadge($("status-badge"), "unknown");
  for (const id of ["live", "headline", "job", "downloads", "cancel", "spec-box", "report-box"]) $(id).hidden = true;
  document.querySelector(".charts").hidden = true;
  $("events").closest("section").hidden = true;
  const state = $("state");
  state.className = "notice notice-unknown";
  state.replaceChildren(el("strong", {text: "Unknown job. "}),
    "There is no job " + jobState.id + " for this API key: the id is wrong, the job was deleted, or it belongs to another tenant. ",
    el("a", {href: "/ui", text: "Back to your jobs"}));
  state.hidden = false;
}

function lastEvent(pred) { for (let i = jobState.events.length - 1; i >= 0; i--) if (pred(jobState.events[i])) return jobState.events[i]; return null; }

function stateNotice(j) {  // queued, cancelling, cancelled, failed: what it means, in words
  const parts = [];
  if (j.status === "queued") {
    parts.push(el("strong", {text: "Queued " + ago(j.created_at) + ". "}));
    if (j.queue_position != null) parts.push(j.queue_position === 0 ? "It is next on " + j.queue + ". "
      : j.queue_position + " older job" + (j.queue_position === 1 ? " waits" : "s wait") + " before it on " + j.queue + ". ");
    parts.push(el("span", {class: "waiting", text: j.waiting_reason ? "Waiting: " + j.waiting_reason
      : "A live worker serves " + j.queue + "; it starts when that worker is free."}));
  } else if (j.status === "cancelling") {
    parts.push(el("strong", {text: "Cancelling. "}), "The worker stops at its next training step and keeps its last checkpoint.");
  } else if (j.status === "cancelled") {
    parts.push(el("strong", {text: "Cancelled " + stamp(j.finished_at) + " (" + ago(j.finished_at) + "). "}));
    const why = jobState.events.filter((e) => e.type === "status" && e.data && ["cancelling", "cancelled"].includes(e.data.status))
      .map((e) => e.message);
    if (why.length) parts.push(el("span", {class: "why", text: "Why: " + why.join("; ") + ". "}));
    const ckpt = lastEvent((e) => (e.type === "checkpoint" || e.type === "sweep_checkpoint") && e.data);
    const whose = ckpt && (ckpt.type === "checkpoint" ? ckpt.data.run : "sweep point " + (ckpt.data.point + 1));
    parts.push(el("span", {class: "checkpoint", text: ckpt
      ? "Kept checkpoint: " + whose + " after epoch " + ckpt.data.epoch + " (" + count(ckpt.data.bytes) + "B, sha256 " + String(ckpt.data.sha256).slice(0, 12) + "…)."
      : j.started_at ? "No checkpoint was kept: it stopped before its first epoch ended." : "It never started, so there is no checkpoint."}));
  } else if (j.status === "failed" && j.error) {
    parts.push(el("strong", {text: "Failed " + ago(j.finished_at) + ": "}), j.error.code + ": " + j.error.message);
  }
  return parts;
}

function facts(j) {
  const r = j.result || {}, s = r.student || {}, b = r.baseline, t = r.teacher || {};
  const score = (run) => !run ? null : run.accuracy != null ? pct(run.accuracy, 2)
    : run.agreement != null ? "agreement with the teacher " + pct(run.agreement, 2) : null;
  const rowsOf = (run) => {
    if (!run || (!run.train_rows && run.steps == null)) return null;
    const parts = [];
    if (run.train_rows) parts.push(run.train_rows.labeled + " labelled + " + run.train_rows.unlabeled + " unlabelled rows");
    if (run.steps != null) parts.push(run.steps + " steps");
    return parts.join(", ");
  };
  const c = r.comparison;
  const versus = c && c.verdict ? c.verdict + " (p = " + Number(c.p_value).toPrecision(3).replace(/\.?0+$/, "") + "; " +
    c.student_only_right + " rows only the student got right, " + c.baseline_only_right + " only the baseline)" : null;
  const rep = r.repeats, spread = (part, unit, sign) => part && part.mean != null && part.std != null
    ? (sign && part.mean >= 0 ? "+" : "") + (100 * part.mean).toFixed(2) + " ± " + (100 * part.std).toFixed(2) + unit : null;
  const seeds = rep && rep.seeds && rep.seeds.length > 1 ? rep.seeds.length + " seeds (" + rep.seeds.join(", ") + "): student " +
    spread(rep.student, " %") + (rep.baseline ? ", baseline " + spread(rep.baseline, " %") : "") +
    (rep.gain ? ", gain " + spread(rep.gain, " points", true) : "") + " (mean ± std; the student above is seed " + rep.seeds[0] + "'s)" : null;
  const p = j.progress || {}, live = j.status === "running";
  const rows = [
    ["Teacher → student", teacherLabel(j.spec) + " → " + studentLabel(j.spec)],
    ["Created", ago(j.created_at) + " · " + stamp(j.created_at)],
    ["Duration", duration(jobSeconds(j))],
    ["Attempt", j.attempt > 1 ? j.attempt + " of " + j.max_attempts : null],
    ["Queue", j.queue],
    ["Phase", live ? p.phase : null],
    ["Epoch", live && p.epochs ? p.epoch + "/" + p.epochs + " epochs" : null],
    ["Evaluated on", r.evaluated_on],
    ["Student accuracy", score(s)], ["Baseline accuracy", score(b)],
    ["Gain over baseline", points(r.distillation_gain)],
    ["Student vs baseline", versus],
    ["Over seeds", seeds],
    ["Teacher accuracy", t.accuracy != null ? pct(t.accuracy, 2) : null],
    ["Size", s.parameters != null ? count(s.parameters) + " parameters" + (t.parameters && r.compression ? " (teacher " + count(t.parameters) + ", " + r.compression.toFixed(1) + "× smaller)" : "") : null],
    ["CPU latency", s.latency_ms != null ? s.latency_ms.toFixed(3) + " ms per batch of 64" + (r.speedup ? " (" + r.speedup.toFixed(1) + "× the teacher's speed)" : "") : null],
    ["Student trained on", rowsOf(s)], ["Baseline trained on", rowsOf(b)],
  ];
  for (const w of r.warnings || []) if (w && w.message) rows.push(["Warning", w.message]);
  return rows;
}

// The result in four numbers, above the details: what the user came for
function headline(j) {
  const r = j.result || {}, s = r.student || {}, b = r.baseline || {}, t = r.teacher || {};
  const tile = (label, value, note, cls) => value == null ? null
    : el("div", {class: "metric " + (cls || "")}, el("span", {class: "metric-label", text: label}),
      el("span", {class: "metric-value", text: value}), note ? el("span", {class: "metric-note", text: note}) : null);
  const accuracy = (run) => (run.accuracy != null ? pct(run.accuracy) : run.agreement != null ? pct(run.agreement) : null);
  const agreementOnly = s.accuracy == null && s.agreement != null;
  return [
    tile("Student", accuracy(s), agreementOnly ? "agreement with the teacher" : r.evaluated_on ? "on " + r.evaluated_on : null, "student"),
    tile("Gain over baseline", points(r.distillation_gain), b.accuracy != null ? "baseline " + pct(b.accuracy) : null,
      r.distillation_gain > 0 ? "up" : r.distillation_gain < 0 ? "down" : ""),
    tile("Teacher", t.accuracy != null ? pct(t.accuracy) : null, null, "teacher"),
    tile("Size", s.parameters != null ? count(s.parameters) : null, r.compression ? r.compression.toFixed(1) + "× smaller than the teacher" : "parameters"),
  ].filter(Boolean);
}

function render(j) {
  setBadge($("status-badge"), j.status);
  $("cancel").hidden = !["queued", "running"].includes(j.status);
  const notice = stateNotice(j), state = $("state");
  state.className = "notice notice-" + j.status;
  state.replaceChildren(...notice);
  state.hidden = !notice.length;
  const p = j.progress || {}, fraction = j.status === "succeeded" ? 1 : p.fraction || 0;
  $("progress").value = fraction;
  $("progress-text").textContent = Math.round(fraction * 100) + " %" +
    (j.status === "running" && p.eta_seconds != null ? " · about " + duration(p.eta_seconds) + " left" : "");
  $("live").hidden = j.status === "queued" || (["failed", "cancelled"].includes(j.status) && !fraction);
  const tiles = j.status === "succeeded" ? headline(j) : [];
  $("headline").replaceChildren(...tiles);
  $("headline").hidden = !tiles.length;
  const dl = $("job");
  dl.replaceChildren();
  for (const [k, v] of facts(j)) {
    if (v == null || v === "") continue;
    dl.append(el("dt", {text: k}), el("dd", {class: "field-" + k.toLowerCase().replace(/[^a-z0-9]+/g, "-"), text: v}));
  }
  drawCharts();
  if (!$("spec").textContent) $("spec").textContent = JSON.stringify(j.spec, null, 2);
  if (j.status === "succeeded") showSucceeded(j);
}

// --- downloads and the report --------------------------------------------------------------------
function showSucceeded(j) {
  if (!jobState.linksShown) {
    jobState.linksShown = true;
    const id = j.id;
    addDownload("download-safetensors", "Student (safetensors)", jobPath(id, "/student?format=safetensors"), id + "-student.safetensors");
    addDownload("download-onnx", "Student (ONNX)", jobPath(id, "/student?format=onnx"), id + "-student.onnx");
    addDownload("download-metrics", "Metrics (CSV)", jobPath(id, "/metrics?format=csv"), id + "-metrics.csv");
    addDownload("download-report", "Report (HTML)", jobPath(id, "/report"), id + "-report.html");
  }
  if (!jobState.reportShown) {
    jobState.reportShown = true;
    showReport(j.id);
  }
}

function addDownload(buttonId, label, path, filename) {
  const b = el("button", {id: buttonId, type: "button", text: label});
  b.onclick = async () => {
    try {
      const blob = await (await api(path)).blob();
      const a = el("a", {href: URL.createObjectURL(blob), download: filename});
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (e) { showError(label + ": " + e.message); }
  };
  $("downloads").append(b);
}

async function showReport(id) {
  const frame = $("report");
  // the frame's document is same-origin (allow-same-origin, and nothing in it runs): read its height
  const fit = () => { try { frame.style.height = (frame.contentDocument.documentElement.scrollHeight + 4) + "px"; } catch (_) {} };
  frame.onload = fit;
  window.addEventListener("resize", fit);
  try {
    frame.srcdoc = await (await api(jobPath(id, "/report"))).text();
    $("report-box").hidden = false;
  } catch (e) { showError("report: " + e.message); }
}

// --- cancel --------------------------------------------------------------------------------------
async function cancelJob() {
  const b = $("cancel");
  b.disabled = true;
  b.textContent = "Cancelling…";
  try {
    jobState.job = await apiJson(jobPath(jobState.id, "/cancel"), {method: "POST"});
    showError("");
    render(jobState.job);
  } catch (e) { showError("Cancel: " + e.message); }
  b.disabled = false;
  b.textContent = "Cancel job";
}

function startPage() {
  jobState.id = $("job-id").dataset.job;
  $("cancel").onclick = cancelJob;
  window.addEventListener("resize", scheduleDraw);
  refreshJob().finally(() => {
    if (jobState.unknown) return;
    followEvents();
    if (!TERMINAL.includes((jobState.job || {}).status)) jobState.timer = setInterval(() => { if (!document.hidden) refreshJob(); }, 2000);
  });
}
