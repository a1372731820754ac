// The job form (/ui/new). Each file field uploads its file when one is chosen (POST /v1/files with the
// field's purpose) and takes the returned id. On submit the form becomes a spec (empty fields left out,
// so the API's defaults apply) and goes to POST /v1/jobs; a 422's errors[] (RFC 9457, one {field,
// reason} per bad value) are written next to the field each one names, and all of them are cleared on
// the next submit and on success.
"use strict";
let uploading = Promise.resolve();  // submit waits for uploads still under way

function fieldBox(name) {  // "dataset.unlabeled_file_ids[2]" -> that field's row, or the nearest parent's
  let n = name || "";
  for (;;) {
    const box = document.querySelector(".field[data-field='" + CSS.escape(n) + "']");
    if (box) return box;
    const shorter = n.replace(/\[\d+\]$/, "") !== n ? n.replace(/\[\d+\]$/, "") : n.includes(".") ? n.slice(0, n.lastIndexOf(".")) : null;
    if (!shorter) return null;
    n = shorter;
  }
}
function setFieldError(name, reason) {
  const box = fieldBox(name);
  if (!box) return false;
  const slot = box.querySelector(".field-error");
  slot.textContent = (slot.textContent ? slot.textContent + "; " : "") + (box.dataset.field === name ? "" : name + ": ") + reason;
  box.classList.add("invalid");
  for (const input of box.querySelectorAll("input, select")) input.setAttribute("aria-invalid", "true");
  return true;
}
function clearErrors() {
  showError("");
  for (const box of document.querySelectorAll(".field.invalid")) {
    box.classList.remove("invalid");
    box.querySelector(".field-error").textContent = "";
    for (const input of box.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  }
}
// A problem's errors next to their fields; what names no field here goes under the form.
function showProblem(e, fallbackField) {
  const errors = (e.problem && e.problem.errors) || [];
  const unplaced = [];
  for (const err of errors) if (!setFieldError(err.field || fallbackField, err.reason)) unplaced.push(err.field + ": " + err.reason);
  if (!errors.length && !(fallbackField && setFieldError(fallbackField, e.message))) unplaced.push(e.message);
  if (unplaced.length) showError(unplaced.join("; "));
  const first = document.querySelector(".field.invalid");
  if (first) first.scrollIntoView({block: "center"});
}

async function upload(file, purpose) {
  const fd = new FormData();
  fd.append("purpose", purpose);
  fd.append("file", file);
  return apiJson("/v1/files", {method: "POST", body: fd});
}
function describeFile(f) {
  const bits = [f.filename + " → " + f.id];
  if (f.num_samples != null) bits.push(f.num_samples + " rows" + (f.num_labeled != null ? ", " + f.num_labeled + " labelled" : ""));
  if (f.num_classes != null) bits.push(f.num_classes + " classes");
  if (f.parameters != null) bits.push(count(f.parameters) + " parameters");
  return bits.join(", ");
}

// one file field: choosing a file uploads it and fills the id
function wireFileField(box) {
  const input = box.querySelector(".upload-file"), result = box.querySelector(".upload-result");
  const purposeSelect = box.querySelector(".upload-purpose"), idInput = box.querySelector(".file-id");
  input.onchange = () => {
    const file = input.files[0];
    if (!file) return;
    const purpose = purposeSelect ? purposeSelect.value : input.dataset.purpose;
    result.textContent = file.name + ": uploading…";
    result.className = "upload-result";
    uploading = uploading.then(async () => {
      try {
        const f = await upload(file, purpose);
        idInput.value = f.id;
        result.textContent = describeFile(f);
        result.className = "upload-result uploaded";
        box.classList.remove("invalid");
        box.querySelector(".field-error").textContent = "";
        if (box.dataset.field === "dataset.train_file_id") $("builtin").value = "";
      } catch (e) {
        result.textContent = "";
        box.querySelector(".field-error").textContent = file.name + ": " + e.message;
        box.classList.add("invalid");
      }
      input.value = "";
    });
  };
}

function wireUnlabeled() {
  $("unlabeled_files").onchange = () => {
    const files = [...$("unlabeled_files").files];
    uploading = uploading.then(async () => {
      for (const file of files) {
        const li = el("li", {text: file.name + ": uploading…"});
        $("unlabeled-result").append(li);
        try {
          const f = await upload(file, "dataset");
          const ids = $("unlabeled_file_ids");
          ids.value = ids.value ? ids.value + ", " + f.id : f.id;
          li.textContent = f.filename + " → " + f.id + ": " + f.num_samples + " rows" +
            (f.num_labeled != null ? ", " + f.num_labeled + " labelled" : "");
          li.className = "uploaded";
        } catch (e) { li.textContent = file.name + ": " + e.message; li.className = "error"; }
      }
      $("unlabeled_files").value = "";
    });
  };
}

// --- the spec --------------------------------------------------------------------------------------
class FieldError extends Error { constructor(field, reason) { super(reason); this.field = field; } }
const text = (id) => $(id).value.trim();
function json(id, field) {
  const v = text(id);
  if (!v) return undefined;
  try { return JSON.parse(v); } catch (_) { throw new FieldError(field, "is not JSON (e.g. {\"hidden_sizes\": [64]})"); }
}
function int(id) { const v = text(id); return v === "" ? undefined : Number(v); }
// "4" -> 4, "2, 4, 8" -> [2, 4, 8] (a sweep); anything else is sent as typed, for the API to name
function numberOrList(id) {
  const v = text(id);
  if (v === "") return undefined;
  const parts = v.split(",").map((s) => s.trim()).filter(Boolean);
  if (parts.length && parts.every((s) => s !== "" && isFinite(Number(s)))) return parts.length > 1 || v.includes(",") ? parts.map(Number) : Number(parts[0]);
  return v;
}
function prune(o) {  // leave out what was not filled in: the API resolves its defaults
  for (const [k, v] of Object.entries(o)) {
    if (v === undefined || v === "") delete o[k];
    else if (v && typeof v === "object" && !Array.isArray(v)) { prune(v); if (!Object.keys(v).length && k !== "teacher") delete o[k]; }
  }
  return o;
}
function buildSpec() {
  const teacher = {file_id: text("teacher_file_id"), arch: text("teacher_arch") || undefined,
    arch_params: json("teacher_params", "teacher.arch_params")};
  const student = {arch: $("student_arch").value, arch_params: json("student_params", "student.arch_params"),
    init_file_id: text("student_init_file_id") || undefined};
  const unlabeled = text("unlabeled_file_ids").split(",").map((s) => s.trim()).filter(Boolean);
  const dataset = {builtin: text("dataset_file_id") ? undefined : $("builtin").value || undefined,
    train_file_id: text("dataset_file_id") || undefined, validation_file_id: text("validation_file_id") || undefined,
    test_file_id: text("test_file_id") || undefined, unlabeled_file_ids: unlabeled.length ? unlabeled : undefined,
    labels_per_class: int("labels_per_class"), standardize: $("standardize").checked || undefined};
  const augment = [...document.querySelectorAll("input.augment:checked")].map((c) => c.value);
  const hyperparameters = {temperature: numberOrList("temperature"), alpha: numberOrList("alpha"), loss: $("loss").value,
    epochs: int("epochs"), batch_size: int("batch_size"),
    learning_rate: text("learning_rate") === "" ? undefined : Number(text("learning_rate")),
    repeats: int("repeats") > 1 ? int("repeats") : undefined,
    early_stopping_patience: int("early_stopping_patience"), restore_best: $("restore_best").checked || undefined,
    augment: augment.length ? augment : undefined};
  const resources = {device: $("device").value, gpus: int("gpus"), processes: int("processes")};
  return prune({teacher, student, dataset, hyperparameters, resources, baseline: $("baseline").checked});
}

function startPage() {
  for (const box of document.querySelectorAll(".field .upload-file")) wireFileField(box.closest(".field"));
  wireUnlabeled();
  $("job-form").onsubmit = async (ev) => {
    ev.preventDefault();
    clearErrors();
    await uploading;
    let spec;
    try { spec = buildSpec(); } catch (e) { if (!setFieldError(e.field, e.message)) showError(e.message); return; }
    $("submit").disabled = true;
    try {
      const j = await apiJson("/v1/jobs", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(spec)});
      clearErrors();
      location.href = "/ui/jobs/" + encodeURIComponent(j.id);
    } catch (e) { showProblem(e); }
    $("submit").disabled = false;
  };
}
