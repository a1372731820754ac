"""The browser dashboard at /ui (issue 6 part 5; issue 15).

Server-rendered HTML shells plus vanilla JavaScript files served by the app (no build step, no CDN, no
external assets; the CSP allows this origin only). The pages hold no tenant data: the login page checks the
API key against the API and keeps it in the browser (api/ui/app.js says where, and why), and the scripts
call the /v1 API with ``Authorization: Bearer <key>``, so the same keys and tenant checks as the API apply
(api/deps.py). The scripts write every server or user string with ``textContent`` (or as an SVG text
node), never ``innerHTML``, so file names and error messages are not interpreted as HTML.

Pages: /ui/login, /ui (the job list), /ui/new (the job form), /ui/jobs/{id} (one job: live charts from
its SSE stream, events, spec, report), /ui/compare (accuracy against size across the tenant's jobs).
"""
from __future__ import annotations

import html
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

router = APIRouter(prefix="/ui", include_in_schema=False)
_STATIC = Path(__file__).resolve().parent.parent / "ui"
_CSP = "default-src 'self'; frame-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"
_KINDS = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
STATIC_FILES = ("app.js", "charts.js", "list.js", "job.js", "form.js", "compare.js", "ui.css", "favicon.svg")


_NAV = ("<a href='/ui'>Jobs</a><a href='/ui/new'>New job</a><a href='/ui/compare'>Compare</a>"
        "<a href='/ui/login' id='logout'>Log out</a>")


def _page(title: str, body: str, *scripts: str, nav: bool = True) -> HTMLResponse:
    tags = "".join(f"<script src='/ui/static/{s}' defer></script>" for s in ("app.js", *scripts))
    doc = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
           "<meta name='viewport' content='width=device-width, initial-scale=1'>"
           f"<title>{html.escape(title)} · kd</title>"
           "<link rel='stylesheet' href='/ui/static/ui.css'><link rel='icon' href='/ui/static/favicon.svg'>"
           f"{tags}</head><body>"
           f"<nav><a href='/ui' class='brand'>kd</a>{_NAV if nav else ''}</nav>"
           f"<main>{body}</main></body></html>")
    return HTMLResponse(doc, headers={"Content-Security-Policy": _CSP, "X-Frame-Options": "SAMEORIGIN"})


@router.get("/login")
def login() -> HTMLResponse:
    return _page("Log in", "<h1>Log in</h1><form id='login-form' class='narrow'>"
                 "<div class='field'><label for='api-key'>API key</label>"
                 "<input id='api-key' type='password' autocomplete='off' required></div>"
                 "<div class='field'><label class='check'><input id='shared-computer' type='checkbox'> "
                 "Shared computer: forget the key when this tab closes (a job opened in a new tab then asks "
                 "for it again)</label></div>"
                 "<button type='submit'>Log in</button>"
                 "<p id='error' class='error' role='alert'></p></form>", nav=False)


@router.get("")
def job_list() -> HTMLResponse:
    return _page("Jobs", "<div class='title-row'><h1>Jobs</h1><a class='button' href='/ui/new'>New job</a></div>"
                 "<div class='controls'><label>Status <select id='status-filter'><option value=''>all</option>"
                 + "".join(f"<option>{s}</option>" for s in
                           ("queued", "running", "succeeded", "failed", "cancelling", "cancelled"))
                 + "</select></label></div>"
                 "<p id='error' class='error' role='alert'></p>"
                 "<table id='jobs' class='cards'><thead><tr><th>Job</th><th>Teacher → student</th><th>Status</th>"
                 "<th>Accuracy</th><th>Gain</th><th>Size</th><th>Duration</th><th>Created</th></tr></thead>"
                 "<tbody></tbody></table><p id='empty' class='muted' hidden>No jobs yet: "
                 "<a href='/ui/new'>submit one</a>.</p>"
                 "<div class='pager'><button id='newer' type='button' disabled>← Newer</button>"
                 "<span id='page-info'></span><button id='older' type='button' disabled>Older →</button></div>",
                 "list.js")


def _field(name: str, label: str, control: str, hint: str = "", *, wrap: bool = True) -> str:
    """One form row: its label, control(s), the spec field it fills (data-field, where the API's
    errors[].field lands) and an empty slot for that error. `wrap`: the label holds the control (one
    input); otherwise the controls follow it (an upload, checkboxes with labels of their own)."""
    hint_html = f"<small class='hint'>{hint}</small>" if hint else ""
    head = (f"<label><span class='label'>{label}</span>{control}</label>" if wrap
            else f"<span class='label'>{label}</span>{control}")
    return f"<div class='field' data-field='{name}'>{head}{hint_html}<span class='field-error' role='alert'></span></div>"


def _file_field(name: str, label: str, input_id: str, purposes: tuple[str, ...], hint: str = "") -> str:
    """A file-id field with its own upload: the chosen file is uploaded at once (with the first purpose,
    or the one picked) and its id fills the field."""
    purpose = ("<select class='upload-purpose' aria-label='purpose'>"
               + "".join(f"<option>{p}</option>" for p in purposes) + "</select>") if len(purposes) > 1 else ""
    control = (f"<input id='{input_id}' class='file-id' placeholder='file_… (or upload)'>"
               f"<span class='upload'><input type='file' class='upload-file' data-purpose='{purposes[0]}' "
               f"aria-label='upload {label}'>{purpose}</span><span class='upload-result'></span>")
    return _field(name, label, control, hint, wrap=False)


def _select(input_id: str, options: list[str], selected: str = "") -> str:
    return (f"<select id='{input_id}'>" + "".join(
        f"<option{' selected' if o == selected else ''}>{html.escape(o)}</option>" for o in options) + "</select>")


@router.get("/new")
def new_job() -> HTMLResponse:
    from kdcore.data import DATASETS
    from kdcore.losses import LOSSES
    from kdcore.models import ARCHITECTURES
    from kdcore.spec import AUGMENTATIONS, MAX_REPEATS, Hyperparameters

    hp = Hyperparameters()  # the form starts from kdcore's defaults

    builtin = ("<select id='builtin'>" + "".join(f"<option{' selected' if d == 'digits' else ''}>{d}</option>"
                                                  for d in DATASETS.names())
               + "<option value=''>none: my training file</option></select>")
    body = (
        "<h1>New job</h1><form id='job-form' novalidate>"
        "<fieldset><legend>Teacher</legend>"
        + _file_field("teacher.file_id", "Teacher file", "teacher_file_id", ("teacher", "teacher_logits"),
                      "safetensors state dict (give its arch below), ONNX graph, or precomputed logits "
                      "(purpose teacher_logits)")
        + _field("teacher.arch", "Arch", "<input id='teacher_arch' placeholder='mlp'>",
                 "state dict only; leave empty for ONNX or logits")
        + _field("teacher.arch_params", "Arch params (JSON)",
                 "<input id='teacher_params' placeholder='{\"hidden_sizes\": [128]}'>")
        + "</fieldset><fieldset><legend>Student</legend>"
        + _field("student.arch", "Arch", _select("student_arch", ARCHITECTURES.names(), "mlp"))
        + _field("student.arch_params", "Arch params (JSON)",
                 "<input id='student_params' value='{\"hidden_sizes\": [64]}'>")
        + _file_field("student.init_file_id", "Initial weights", "student_init_file_id", ("student_init",),
                      "optional safetensors, checked against the student's shapes")
        + "</fieldset><fieldset><legend>Data</legend>"
        + _field("dataset.builtin", "Builtin dataset", builtin, "or upload your own training file below")
        + _file_field("dataset.train_file_id", "Training file", "dataset_file_id", ("dataset",),
                      ".npz (x, y), CSV or Parquet with a label column")
        + _file_field("dataset.validation_file_id", "Validation file", "validation_file_id", ("dataset",),
                      "optional; else 10 % of train is held out")
        + _file_field("dataset.test_file_id", "Test file", "test_file_id", ("dataset",),
                      "optional; the final scores use it")
        + _field("dataset.unlabeled_file_ids", "Unlabelled inputs",
                 "<input id='unlabeled_files' type='file' multiple accept='.npz,.csv,.parquet,.pq'>"
                 "<input id='unlabeled_file_ids' placeholder='file_…, file_…'>",
                 "files without labels (several at once); the teacher labels them", wrap=False)
        + "<ul id='unlabeled-result' class='uploads'></ul>"
        + _field("dataset.labels_per_class", "Labels per class",
                 "<input id='labels_per_class' type='number' min='1'>",
                 "keep N labels per class; the other rows become unlabelled inputs")
        + _field("dataset.standardize", "", "<label class='check'><input id='standardize' type='checkbox'> "
                                            "Standardise features (train statistics)</label>", wrap=False)
        + "</fieldset><fieldset><legend>Training</legend><div class='grid'>"
        + _field("hyperparameters.temperature", "Temperature T", f"<input id='temperature' value='{hp.temperature:g}'>",
                 "a list (2, 4, 8) sweeps")
        + _field("hyperparameters.alpha", "α (hard-label weight)", f"<input id='alpha' value='{hp.alpha:g}'>",
                 "a list (0.1, 0.5) sweeps")
        + _field("hyperparameters.loss", "Loss", _select("loss", LOSSES.names(), hp.loss))
        + _field("hyperparameters.epochs", "Epochs", "<input id='epochs' type='number' min='1' value='5'>")
        + _field("hyperparameters.batch_size", "Batch size",
                 f"<input id='batch_size' type='number' min='1' value='{hp.batch_size}'>")
        + _field("hyperparameters.learning_rate", "Learning rate",
                 f"<input id='learning_rate' type='number' step='any' value='{hp.learning_rate:g}'>")
        + _field("hyperparameters.repeats", "Seeds",
                 f"<input id='repeats' type='number' min='1' max='{MAX_REPEATS}' value='1'>",
                 "train student and baseline this many times: mean ± std")
        + _field("hyperparameters.early_stopping_patience", "Early stopping patience",
                 "<input id='early_stopping_patience' type='number' min='1' placeholder='off'>",
                 "epochs without a better validation accuracy")
        + _field("hyperparameters.restore_best", "", "<label class='check'><input id='restore_best' "
                                                     "type='checkbox'> End with the best epoch's weights</label>", wrap=False)
        + "</div>"
        + _field("hyperparameters.augment", "Augmented views (the teacher labels each one)",
                 "<span class='checks'>" + "".join(
                     f"<label class='check'><input type='checkbox' class='augment' value='{a}'> {a}</label>"
                     for a in AUGMENTATIONS) + "</span>", wrap=False)
        + _field("baseline", "", "<label class='check'><input id='baseline' type='checkbox' checked> "
                                 "Also train the student from scratch (the baseline the gain is measured "
                                 "against)</label>", wrap=False)
        + "</fieldset><fieldset><legend>Resources</legend><div class='grid'>"
        + _field("resources.device", "Device", _select("device", ["cpu", "cuda"], "cpu"))
        + _field("resources.gpus", "GPUs", "<input id='gpus' type='number' min='0' placeholder='default'>")
        + _field("resources.processes", "Processes",
                 "<input id='processes' type='number' min='1' placeholder='default'>", "data-parallel")
        + "</div></fieldset>"
        "<p id='error' class='error' role='alert'></p>"
        "<button type='submit' id='submit'>Submit job</button></form>")
    return _page("New job", body, "form.js")


@router.get("/jobs/{job_id}")
def job_page(job_id: str) -> HTMLResponse:
    jid = html.escape(job_id, quote=True)
    return _page("Job", f"<div class='title-row'><h1>Job <span id='job-id' data-job='{jid}'>{jid}</span></h1>"
                 "<span id='status-badge' class='badge'>loading</span>"
                 "<button id='cancel' type='button' class='danger' hidden>Cancel job</button></div>"
                 "<p id='error' class='error' role='alert'></p>"
                 "<section id='state' class='notice' hidden></section>"
                 "<div id='live'><progress id='progress' max='1' value='0'></progress> <span id='progress-text'>"
                 "</span></div>"
                 "<div id='headline' class='headline' hidden></div><dl id='job' class='facts'></dl><p id='downloads' class='actions'></p>"
                 "<section class='charts'><figure><figcaption>Training loss</figcaption>"
                 "<svg id='chart-loss' class='chart' role='img' aria-label='training loss per epoch'></svg></figure>"
                 "<figure><figcaption>Validation accuracy</figcaption>"
                 "<svg id='chart-accuracy' class='chart' role='img' aria-label='validation accuracy per epoch'>"
                 "</svg></figure></section>"
                 "<section><h2>Events</h2><ol id='events' class='events'></ol></section>"
                 "<details id='spec-box'><summary>Spec (every default resolved)</summary><pre id='spec'></pre></details>"
                 "<section id='report-box' hidden><h2>Report</h2>"
                 # The report (self-contained HTML: inline CSS, data: images, no script) is shown with
                 # srcdoc. The sandbox allows no script, form, popup, top navigation or download; its one
                 # token, allow-same-origin, lets this page read the report's height to show it whole.
                 # Without allow-scripts nothing in the frame runs, so that origin cannot be used from
                 # inside it (the key in browser storage stays out of reach; and this page's CSP, which
                 # srcdoc inherits, forbids inline script anyway).
                 "<iframe id='report' title='report' sandbox='allow-same-origin'></iframe></section>",
                 "charts.js", "job.js")


@router.get("/compare")
def compare() -> HTMLResponse:
    return _page("Compare", "<h1>Compare students</h1><p class='muted'>Accuracy (on each job's evaluation split: its "
                 "test file, else the validation split) against size, for the student of every succeeded job of "
                 "this tenant, teachers marked: pick the smallest student that is accurate enough. Click a point "
                 "to open its job.</p>"
                 "<div class='controls'><label>Size axis <select id='x-axis'>"
                 "<option value='parameters'>parameters</option><option value='latency_ms'>CPU latency (ms)"
                 "</option></select></label> <label class='check'><input id='show-baselines' type='checkbox' "
                 "checked> baselines</label></div><p id='error' class='error' role='alert'></p>"
                 "<figure class='scatter'><svg id='scatter' class='chart' role='img' "
                 "aria-label='accuracy against size'></svg></figure><p id='compare-note' class='muted'></p>"
                 "<table id='compare-table' class='cards'><thead><tr><th>Model</th><th>Job</th><th>Parameters</th>"
                 "<th>Latency</th><th>Accuracy</th><th>Gain</th></tr></thead><tbody></tbody></table>",
                 "charts.js", "compare.js")


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC_FILES:
        return Response(status_code=404)
    return Response((_STATIC / name).read_bytes(), media_type=_KINDS[Path(name).suffix],
                    headers={"Cache-Control": "no-cache"})
