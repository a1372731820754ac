// kd dashboard: vanilla JS, no build step. The API key lives in sessionStorage; every call goes to
// the /v1 API with Authorization: Bearer. Server strings are written with textContent only.
"use strict";
const KEY = "kd_api_key";
const $ = (id) => document.getElementById(id);
function key() { return sessionStorage.getItem(KEY); }
function showError(msg) { const e = $("error"); if (e) e.textContent = msg; }
async function api(path, opts = {}) {
  opts.headers = Object.assign({Authorization: "Bearer " + key()}, opts.headers || {});
  const r = await fetch(path, opts);
  if (r.status === 401) { sessionStorage.removeItem(KEY); location.href = "/ui/login"; throw new Error("unauthorized"); }
  if (!r.ok) {
    let detail = r.status + " " + r.statusText;
    try { const p = await r.json(); detail = (p.title || "") + ": " + (p.detail || JSON.stringify(p.errors || p)); } catch (_) {}
    throw new Error(detail);
  }
  return r;
}
function cell(tr, text) { const td = document.createElement("td"); td.textContent = text == null ? "" : String(text); tr.appendChild(td); return td; }
function pct(p) { return p && p.epochs && p.epoch != null ? p.epoch + "/" + p.epochs + " epochs" : ""; }

async function jobList() {
  const body = $("jobs").querySelector("tbody");
  try {
    const jobs = (await (await api("/v1/jobs?limit=100")).json()).data;
    body.replaceChildren();
    for (const j of jobs) {
      const tr = document.createElement("tr"); tr.dataset.job = j.id;
      const a = document.createElement("a"); a.href = "/ui/jobs/" + encodeURIComponent(j.id); a.textContent = j.id;
      const live = j.status === "running", p = j.progress || {};
      cell(tr, "").appendChild(a); cell(tr, j.status).className = "status"; cell(tr, live ? p.phase : "");
      cell(tr, Math.round((p.fraction || 0) * 100) + " %" + (live && pct(p) ? " · " + pct(p) : "")).className = "progress"; cell(tr, j.created_at); body.appendChild(tr);
    }
    showError("");
  } catch (e) { showError(e.message); }
}

async function jobPage() {
  const id = $("job-id").dataset.job, dl = $("job");
  let reportShown = false, linksShown = false;
  async function refresh() {
    let j;
    try { j = await (await api("/v1/jobs/" + encodeURIComponent(id))).json(); } catch (e) { showError(e.message); return true; }
    dl.replaceChildren();
    const p = j.progress || {};
    // the latest student epoch from GET /v1/jobs/{id}/metrics (Progress itself has no loss/accuracy)
    let last = null;
    try { const ms = (await (await api("/v1/jobs/" + encodeURIComponent(id) + "/metrics")).json()).data.filter((m) => m.run === "student");
      last = ms.length ? ms[ms.length - 1].values : null; } catch (_) {}
    const num = (v, d) => (typeof v === "number" ? v.toFixed(d) : null);
    const live = j.status === "running";  // the last phase of a finished job says nothing
    const rows = [["Status", j.status], ["Phase", live ? p.phase : null], ["Epoch", live ? pct(p) : null],
      ["Progress", Math.round((p.fraction || 0) * 100) + " %"],
      ["ETA", p.eta_seconds == null || !live ? null : Math.round(p.eta_seconds) + " s"],
      ["Train loss", last && num(last.train_loss, 4)], ["Val accuracy", last && num(last.val_accuracy, 4)],
      ["Val agreement", last && last.val_accuracy == null ? num(last.val_agreement, 4) : null],
      ["Error", j.error ? j.error.code + ": " + j.error.message : null]];
    const r = j.result || {};
    // result.student / result.baseline: accuracy is null when the evaluation split has no labels (then
    // the student's agreement with the teacher is the score); train_rows and steps say what each run saw
    const score = (run) => !run ? null : run.accuracy != null ? num(run.accuracy, 4)
      : run.agreement != null ? "agreement with the teacher " + num(run.agreement, 4) : null;
    const rowsOf = (run) => {
      if (!run || (!run.train_rows && run.steps == null)) return null;
      const parts = [];
      if (run.train_rows) parts.push(run.train_rows.labeled + " labelled + " + run.train_rows.unlabeled + " unlabelled rows");
      if (run.steps != null) parts.push(run.steps + " steps");
      return parts.join(", ");
    };
    // result.comparison: McNemar's exact test on the rows only one of student and baseline gets right
    // (absent from results stored before it); result.warnings: near chance, a loss that diverged
    const c = r.comparison;
    const versus = c && c.verdict ? c.verdict + " (p = " + Number(c.p_value).toPrecision(3).replace(/\.?0+$/, "") + "; " +
      c.student_only_right + " rows only the student got right, " + c.baseline_only_right + " only the baseline)" : null;
    rows.push(["Evaluated on", r.evaluated_on], ["Student accuracy", score(r.student)], ["Baseline accuracy", score(r.baseline)],
      ["Student vs baseline", versus],
      ["Student trained on", rowsOf(r.student)], ["Baseline trained on", rowsOf(r.baseline)]);
    for (const w of r.warnings || []) if (w && w.message) rows.push(["Warning", w.message]);
    for (const [k, v] of rows) { if (v == null || v === "") continue;
      const dt = document.createElement("dt"); dt.textContent = k; const dd = document.createElement("dd"); dd.textContent = String(v);
      dd.className = "field-" + k.toLowerCase().replace(/ /g, "-"); dl.append(dt, dd); }
    $("progress").max = 1; $("progress").value = p.fraction || 0;
    if (j.status === "succeeded") {
      $("progress").max = 1; $("progress").value = 1;
      if (!linksShown) { linksShown = true; for (const f of ["safetensors", "onnx"]) addDownload(id, f); }
      if (!reportShown) { reportShown = true;
        try { $("report").srcdoc = await (await api("/v1/jobs/" + encodeURIComponent(id) + "/report")).text(); }
        catch (e) { showError("report: " + e.message); } }
    }
    return ["succeeded", "failed", "cancelled"].includes(j.status);
  }
  while (!(await refresh())) await new Promise((r) => setTimeout(r, 1000));
}
function addDownload(id, format) {
  const b = document.createElement("button"); b.id = "download-" + format; b.textContent = "Download student (" + format + ")";
  b.onclick = async () => {
    try {
      const blob = await (await api("/v1/jobs/" + encodeURIComponent(id) + "/student?format=" + format)).blob();
      const a = document.createElement("a"); a.href = URL.createObjectURL(blob); a.download = "student." + format; a.click();
    } catch (e) { showError(format + ": " + e.message); }
  };
  $("downloads").appendChild(b);
}

async function upload(file, purpose) {
  const fd = new FormData(); fd.append("purpose", purpose); fd.append("file", file);
  return (await api("/v1/files", {method: "POST", body: fd})).json();
}
function newJob() {
  $("upload-form").onsubmit = async (ev) => {
    ev.preventDefault();
    try {
      const f = await upload($("upload-file").files[0], $("upload-purpose").value);
      $("upload-result").textContent = "Uploaded " + f.filename + " as " + f.id + " (" + f.purpose + ")";
      $(f.purpose === "teacher" ? "teacher_file_id" : "dataset_file_id").value = f.id;
    } catch (e) { showError(e.message); }
  };
  // unlabelled inputs: every chosen file is uploaded with purpose dataset, one after the other, and its id
  // joins dataset.unlabeled_file_ids; the job form waits for uploads still under way
  let uploading = Promise.resolve();
  $("unlabeled_files").onchange = () => {
    const files = [...$("unlabeled_files").files];
    uploading = uploading.then(async () => {
      for (const file of files) {
        const li = document.createElement("li"); li.textContent = file.name + ": uploading…"; $("unlabeled-result").appendChild(li);
        try {
          const f = await upload(file, "dataset");
          const ids = $("unlabeled_file_ids"); ids.value = ids.value ? ids.value + ", " + f.id : f.id;
          li.textContent = f.filename + " → " + f.id + ": " + f.num_samples + " rows" +
            (f.num_labeled != null ? ", " + f.num_labeled + " labelled" : "");
          li.className = "uploaded";
        } catch (e) { li.textContent = file.name + ": " + e.message; li.className = "error"; }
      }
      $("unlabeled_files").value = "";
    });
  };
  $("job-form").onsubmit = async (ev) => {
    ev.preventDefault();
    await uploading;
    let params, tparams;
    try { params = JSON.parse($("student_params").value || "{}"); } catch (e) { showError("student params: not JSON"); return; }
    try { tparams = JSON.parse($("teacher_params").value || "{}"); } catch (e) { showError("teacher params: not JSON"); return; }
    const teacher = {file_id: $("teacher_file_id").value};
    if ($("teacher_arch").value) { teacher.arch = $("teacher_arch").value; teacher.arch_params = tparams; }
    const dataset = {train_file_id: $("dataset_file_id").value};
    const unlabeledIds = $("unlabeled_file_ids").value.split(",").map((s) => s.trim()).filter(Boolean);
    if (unlabeledIds.length) dataset.unlabeled_file_ids = unlabeledIds;
    if ($("labels_per_class").value) dataset.labels_per_class = Number($("labels_per_class").value);
    const hyperparameters = {temperature: Number($("temperature").value), alpha: Number($("alpha").value), epochs: Number($("epochs").value)};
    const augment = [...document.querySelectorAll("input.augment:checked")].map((c) => c.value);
    if (augment.length) hyperparameters.augment = augment;
    const spec = {teacher, student: {arch: $("student_arch").value, arch_params: params}, dataset, hyperparameters,
      baseline: $("baseline").checked};
    try {
      const j = await (await api("/v1/jobs", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(spec)})).json();
      location.href = "/ui/jobs/" + encodeURIComponent(j.id);
    } catch (e) { showError(e.message); }
  };
}

document.addEventListener("DOMContentLoaded", () => {
  const lo = $("logout"); if (lo) lo.onclick = () => sessionStorage.removeItem(KEY);
  if ($("login-form")) {
    $("login-form").onsubmit = (ev) => { ev.preventDefault(); sessionStorage.setItem(KEY, $("api-key").value); location.href = "/ui"; };
    return;
  }
  if (!key()) { location.href = "/ui/login"; return; }
  if ($("jobs")) { jobList(); setInterval(jobList, 2000); }
  else if ($("job-id")) jobPage();
  else if ($("job-form")) newJob();
});
