"""The browser dashboard at /ui (issue 6 part 5), first cut.

Server-rendered HTML shells plus one vanilla JavaScript file served by the app (no build step, no
CDN, no external assets). The pages hold no tenant data: the login page keeps the API key in
sessionStorage and the script calls the /v1 API with ``Authorization: Bearer <key>``, so the same
keys and the same tenant checks as the API apply (api/deps.py). The script writes every server or
user string with ``textContent``, never ``innerHTML``, so file names and error messages are not
interpreted as HTML.
"""
from __future__ import annotations

import html
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

router = APIRouter(prefix="/ui", include_in_schema=False)
_STATIC = Path(__file__).resolve().parent.parent / "ui"
_CSP = "default-src 'self'; frame-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"


def _page(title: str, body: str) -> HTMLResponse:
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)} · kd</title>"
           "<link rel='stylesheet' href='/ui/static/ui.css'><link rel='icon' href='/ui/static/favicon.svg'></head><body>"
           "<nav><a href='/ui'>Jobs</a> <a href='/ui/new'>New job</a> "
           "<a href='/ui/login' id='logout'>Log out</a></nav>"
           f"<main>{body}</main><script src='/ui/static/app.js'></script></body></html>")
    return HTMLResponse(doc, headers={"Content-Security-Policy": _CSP, "X-Frame-Options": "SAMEORIGIN"})


@router.get("/login")
def login() -> HTMLResponse:
    return _page("Log in", "<h1>Log in</h1><form id='login-form'><label>API key "
                 "<input id='api-key' type='password' autocomplete='off' required></label>"
                 "<button type='submit'>Log in</button></form><p id='error' class='error'></p>")


@router.get("")
def job_list() -> HTMLResponse:
    return _page("Jobs", "<h1>Jobs</h1><p id='error' class='error'></p><table id='jobs'><thead><tr>"
                 "<th>Job</th><th>Status</th><th>Phase</th><th>Progress</th><th>Created</th></tr></thead>"
                 "<tbody></tbody></table>")


@router.get("/new")
def new_job() -> HTMLResponse:
    return _page("New job", "<h1>Upload files</h1><form id='upload-form'>"
                 "<label>File <input id='upload-file' type='file' required></label>"
                 "<label>Purpose <select id='upload-purpose'><option>teacher</option><option>dataset</option>"
                 "</select></label><button type='submit'>Upload</button></form><p id='upload-result'></p>"
                 "<h1>Submit a job</h1><form id='job-form'>"
                 "<label>Teacher file id <input id='teacher_file_id' required></label>"
                 "<label>Teacher arch (safetensors state dict only) <input id='teacher_arch' placeholder='mlp'></label>"
                 "<label>Teacher params (JSON) <input id='teacher_params' placeholder='{\"hidden_sizes\": [128]}'></label>"
                 "<label>Dataset file id <input id='dataset_file_id' required></label>"
                 "<fieldset><legend>Unlabelled inputs (the teacher labels them)</legend>"
                 "<label>Upload files (.npz with x only, CSV/Parquet without a label column; several at once) "
                 "<input id='unlabeled_files' type='file' multiple accept='.npz,.csv,.parquet,.pq'></label>"
                 "<ul id='unlabeled-result'></ul>"
                 "<label>Unlabelled input file ids (comma-separated; uploads above add theirs) "
                 "<input id='unlabeled_file_ids' size='70' placeholder='file_…, file_…'></label></fieldset>"
                 "<label>Labels per class (keep N labels per class, the rest become unlabelled inputs) "
                 "<input id='labels_per_class' type='number' min='1'></label>"
                 "<fieldset><legend>Augmented views (the teacher labels each one)</legend>"
                 + "".join(f"<label><input type='checkbox' class='augment' value='{a}'> {a}</label>"
                           for a in ("noise", "shift", "crop_flip", "mixup")) + "</fieldset>"
                 "<label>Student arch <input id='student_arch' value='mlp'></label>"
                 "<label>Student params (JSON) <input id='student_params' value='{\"hidden_sizes\": [64]}'></label>"
                 "<label>T <input id='temperature' type='number' step='any' value='4'></label>"
                 "<label>alpha <input id='alpha' type='number' step='any' value='0.3'></label>"
                 "<label>Epochs <input id='epochs' type='number' value='5'></label>"
                 "<label><input id='baseline' type='checkbox' checked> Train a baseline</label>"
                 "<button type='submit'>Submit</button></form><p id='error' class='error'></p>")


@router.get("/jobs/{job_id}")
def job_page(job_id: str) -> HTMLResponse:
    jid = html.escape(job_id, quote=True)
    return _page("Job", f"<h1>Job <span id='job-id' data-job='{jid}'>{jid}</span></h1>"
                 "<p id='error' class='error'></p><dl id='job'></dl><progress id='progress' max='1' value='0'>"
                 "</progress><p id='downloads'></p>"
                 # The report (self-contained HTML: inline CSS, data: images, no script) is shown with
                 # srcdoc, which without a sandbox would run as this origin, the tenant's key in reach
                 # (sessionStorage). An empty sandbox allows nothing (no script, same origin, form,
                 # popup, top navigation or download), and the report needs nothing.
                 "<iframe id='report' title='report' sandbox=''></iframe>")


@router.get("/static/{name}")
def static(name: str) -> Response:
    kinds = {"app.js": "text/javascript", "ui.css": "text/css", "favicon.svg": "image/svg+xml"}
    if name not in kinds:
        return Response(status_code=404)
    return Response((_STATIC / name).read_bytes(), media_type=kinds[name])
