"""The /ui pages: served by the app, no external assets, user strings escaped, no tenant data in HTML."""
from __future__ import annotations

import re

import pytest


@pytest.mark.parametrize("path", ["/ui", "/ui/login", "/ui/new", "/ui/jobs/job_123"])
def test_pages_served_without_external_assets(client, path):
    r = client.get(path, headers={"Authorization": ""})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    # every src/href is same-origin: no CDN, no external asset
    for url in re.findall(r"(?:src|href)='([^']*)'", r.text):
        assert url.startswith("/ui"), url


def test_job_id_with_script_is_escaped(client):
    r = client.get("/ui/jobs/%3Cscript%3Ealert('x')")
    assert r.status_code == 200
    assert "<script>alert" not in r.text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)" in r.text


def test_static_assets(client):
    js = client.get("/ui/static/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    # server and user strings go through textContent only, never parsed as HTML
    assert "innerHTML" not in js.text and "textContent" in js.text
    assert "Authorization" in js.text and "sessionStorage" in js.text
    assert client.get("/ui/static/ui.css").status_code == 200
    assert client.get("/ui/static/..%2Fapp.py").status_code == 404
    assert client.get("/ui/static/secret.txt").status_code == 404


def test_pages_hold_no_tenant_data(client):
    # a file named with markup exists for this tenant; the HTML shells never render it (the script
    # fetches it with the key and writes it with textContent)
    client.post("/v1/files", files={"file": ("<script>x<\\script>.csv", b"a,b\n")}, data={"purpose": "dataset"})
    for path in ["/ui", "/ui/new"]:
        assert "<script>x" not in client.get(path).text


def test_the_job_form_takes_unlabelled_inputs_labels_per_class_and_augmentations(client):
    page = client.get("/ui/new").text
    for element in ("id='unlabeled_file_ids'", "id='labels_per_class'", "id='unlabeled-result'"):
        assert element in page
    # several unlabelled input files can be chosen at once; each is uploaded with purpose dataset
    assert re.search(r"<input id='unlabeled_files' type='file' multiple[ >]", page)
    assert [a for a in ("noise", "shift", "crop_flip", "mixup") if f"class='augment' value='{a}'" in page] == [
        "noise", "shift", "crop_flip", "mixup"]
    script = client.get("/ui/static/app.js").text
    assert "dataset.unlabeled_file_ids" in script and "dataset.labels_per_class" in script
    assert "hyperparameters.augment" in script and "train_rows" in script
    assert 'upload(file, "dataset")' in script and "num_labeled" in script
    # the job page: rows and steps of both runs, agreement when the evaluation split has no labels
    for needle in ("r.evaluated_on", "run.agreement", "run.steps", "Baseline trained on"):
        assert needle in script


def test_the_report_frame_is_sandboxed(client):
    """The job page shows the report with <iframe srcdoc>, which without a sandbox runs as the
    dashboard's origin, with the tenant's key in sessionStorage (issue 16 item 10). The frame carries
    an empty sandbox (no token: no script, same origin, form, popup, navigation or download), the
    script never loosens it, and the report needs nothing it forbids."""
    from api.report import render_report
    from tests.worker.test_report import hand_made

    page = client.get("/ui/jobs/job_123").text
    frames = re.findall(r"<iframe\b[^>]*>", page)
    assert len(frames) == 1 and "id='report'" in frames[0], frames
    sandbox = re.search(r"\bsandbox='([^']*)'", frames[0])
    assert sandbox is not None, frames[0]
    assert sandbox.group(1).split() == [], sandbox.group(1)
    script = client.get("/ui/static/app.js").text
    assert ".srcdoc" in script and "sandbox" not in script  # it fills the frame, never touches its sandbox
    report = render_report(*hand_made()).lower()
    for needs in ("<script", "<form", "<a ", "target=", "javascript:"):
        assert needs not in report, needs
