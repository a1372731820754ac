"""The /ui pages: served by the app, no external assets, user strings escaped, no tenant data in HTML,
the key sent only as a Bearer header, form fields that name real spec fields (so a 422's errors land
next to them), a sandboxed report frame. What the pages do in a browser is tests/ui/test_dashboard_e2e.py."""
from __future__ import annotations

import re

import pytest

from api.routes.ui import STATIC_FILES

PAGES = ["/ui", "/ui/login", "/ui/new", "/ui/jobs/job_123", "/ui/compare"]
SCRIPTS = [name for name in STATIC_FILES if name.endswith(".js")]


def scripts(client) -> dict[str, str]:
    return {name: client.get(f"/ui/static/{name}").text for name in SCRIPTS}


@pytest.mark.parametrize("path", PAGES)
def test_pages_served_without_external_assets(client, path):
    r = client.get(path, headers={"Authorization": ""})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "script-src" not in r.headers["content-security-policy"]  # scripts fall back to 'self' only
    # every src/href is same-origin: no CDN, no external asset
    for url in re.findall(r"(?:src|href)='([^']*)'", r.text):
        assert url.startswith("/ui"), url
    # laid out for the device's width (phones), and no inline script (the CSP would refuse it)
    assert "<meta name='viewport' content='width=device-width, initial-scale=1'>" in r.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", r.text)


def test_job_id_with_script_is_escaped(client):
    r = client.get("/ui/jobs/%3Cscript%3Ealert('x')")
    assert r.status_code == 200
    assert "<script>alert" not in r.text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)" in r.text


def test_static_assets(client):
    for name in STATIC_FILES:
        r = client.get(f"/ui/static/{name}")
        assert r.status_code == 200, name
    assert client.get("/ui/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/static/ui.css").headers["content-type"].startswith("text/css")
    assert client.get("/ui/static/..%2Fapp.py").status_code == 404
    assert client.get("/ui/static/secret.txt").status_code == 404
    # every page loads the scripts it names, and only files that exist
    for path in PAGES:
        for src in re.findall(r"<script src='/ui/static/([^']+)'", client.get(path).text):
            assert src in STATIC_FILES, (path, src)


def test_scripts_write_text_never_markup(client):
    """Server and user strings go through textContent (or SVG text nodes) only, never parsed as HTML."""
    for name, text in scripts(client).items():
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, (name, sink)
    assert "textContent" in scripts(client)["app.js"]


def test_the_key_goes_only_in_the_authorization_header(client):
    """The API key is read in one place (app.js: Key.get) and sent as `Authorization: Bearer`, never
    in a URL, and kept in localStorage (or sessionStorage for a shared computer): the trade-off the
    README states."""
    all_scripts = scripts(client)
    app = all_scripts["app.js"]
    assert app.count('Authorization: "Bearer " + Key.get()') == 1
    assert "localStorage.setItem" not in app.replace("(sharedComputer ? sessionStorage : localStorage).setItem", "")
    assert "(sharedComputer ? sessionStorage : localStorage).setItem(KEY, value)" in app
    for name, text in all_scripts.items():
        if name != "app.js":
            assert "Key.get" not in text and "Storage" not in text, name  # pages call api(), which adds the key
        assert not re.search(r"[?&](key|api_key|token)=", text), name


def _spec_fields() -> set[str]:
    """Every dotted field of a job spec, from the request model (JobCreate) itself."""
    from api.schemas.jobs import JobCreate

    out = set()
    for name, field in JobCreate.model_fields.items():
        model = field.annotation
        nested = getattr(model, "model_fields", None)
        if nested is None:
            out.add(name)
        else:
            out.update(f"{name}.{sub}" for sub in nested)
    return out


def test_every_form_field_names_a_spec_field(client):
    """The form's rows carry the spec field they fill (data-field); the API's 422 names the same field
    in errors[].field, and form.js puts the reason in that row. A row naming a field the API does not
    have would never show its error."""
    page = client.get("/ui/new").text
    fields = re.findall(r"class='field' data-field='([^']+)'", page)
    assert len(fields) == len(set(fields)), fields
    assert set(fields) <= _spec_fields(), set(fields) - _spec_fields()
    # what the issue asks the form to cover
    for wanted in ("dataset.builtin", "dataset.test_file_id", "dataset.validation_file_id", "hyperparameters.learning_rate",
                   "hyperparameters.batch_size", "hyperparameters.loss", "hyperparameters.temperature",
                   "hyperparameters.early_stopping_patience", "resources.device", "resources.gpus", "resources.processes",
                   "student.init_file_id", "teacher.file_id", "dataset.unlabeled_file_ids", "dataset.labels_per_class",
                   "hyperparameters.augment", "hyperparameters.repeats"):
        assert wanted in fields, wanted
    # choices come from kdcore's registries, so a new architecture, loss or builtin appears by itself
    from kdcore.data import DATASETS
    from kdcore.losses import LOSSES
    from kdcore.models import ARCHITECTURES

    for name in (*ARCHITECTURES.names(), *LOSSES.names(), *DATASETS.names()):
        assert f"<option>{name}</option>" in page or f"<option selected>{name}</option>" in page, name
    # uploads: teacher or teacher_logits for the teacher, student_init for the initial weights
    assert "data-purpose='teacher'" in page and "<option>teacher_logits</option>" in page
    assert "data-purpose='student_init'" in page
    form = scripts(client)["form.js"]
    assert "errors" in form and "setFieldError(err.field" in form and "clearErrors()" in form


def test_the_report_frame_is_sandboxed(client):
    """The job page shows the report with <iframe srcdoc>, which without a sandbox runs as the
    dashboard's origin, with the tenant's key in browser storage (issue 16 item 10). The sandbox allows
    no script (so nothing in the frame runs, and the same origin cannot be used from inside it), form,
    popup, navigation or download; its one token, allow-same-origin, lets the dashboard read the report's
    height to show it whole (issue 15). allow-scripts must never join it: with allow-same-origin the
    frame could then remove its own sandbox. The scripts never touch the attribute, and the report needs
    nothing the sandbox forbids."""
    from api.report import render_report
    from tests.factories import hand_made

    page = client.get("/ui/jobs/job_123").text
    frames = re.findall(r"<iframe\b[^>]*>", page)
    assert len(frames) == 1 and "id='report'" in frames[0], frames
    sandbox = re.search(r"\bsandbox='([^']*)'", frames[0])
    assert sandbox is not None, frames[0]
    assert sandbox.group(1).split() == ["allow-same-origin"], sandbox.group(1)
    all_scripts = "".join(scripts(client).values())
    assert ".srcdoc" in all_scripts and "allow-scripts" not in page + all_scripts
    assert not re.search(r"\.sandbox\b|[\"']sandbox[\"']", all_scripts)  # never touched
    report = render_report(*hand_made()).lower()
    for needs in ("<script", "<form", "<a ", "target=", "javascript:", "http-equiv"):
        assert needs not in report, needs
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", report)  # no inline event handler


def test_pages_hold_no_tenant_data(client):
    # a file named with markup exists for this tenant; the HTML shells never render it (the scripts
    # fetch it with the key and write it with textContent)
    client.post("/v1/files", files={"file": ("<script>x<\\script>.csv", b"a,b\n")}, data={"purpose": "dataset"})
    for path in PAGES:
        assert "<script>x" not in client.get(path).text
