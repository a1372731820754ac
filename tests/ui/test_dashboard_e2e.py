"""The /ui dashboard in a real browser (Debian's /usr/bin/chromium driven by Playwright's sync API)
against the real stack: `python -m api` under uvicorn and a `python -m worker` Celery process on
PostgreSQL + Redis. Log in with the API key, upload a teacher, a dataset and two unlabelled input
files through the form, submit a job, watch its page advance (and show what each run trained on), read
the report in its iframe and download the student, whose bytes must hash to the sha256 the API stores
for it (the download's ETag).

Screenshots of each page go to tests/artifacts/ (git-ignored) for a person to look at."""

from __future__ import annotations

import hashlib
import re
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.utils import ROOT, free_port, Proc, service_env, start_worker, wait_healthy

pytestmark = pytest.mark.slow
KEY = "kd_ui_e2e_" + "u" * 40
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SHOTS = ROOT / "tests" / "artifacts"
expect = None  # playwright.sync_api.expect, imported by the browser fixture (the module loads without it)


@pytest.fixture
def live_api(tmp_path, clean_pg, redis_url):
    """The API under uvicorn and one worker process, as in tests/e2e/test_lifecycle_http.py."""
    port = free_port()
    env = service_env(database_url=clean_pg, broker_url=redis_url, data_dir=tmp_path / "data", api_key=KEY,
                      KD_API_PORT=str(port), KD_HEARTBEAT_SECONDS="0.5", KD_LEASE_SECONDS="10")
    worker = start_worker(env, tmp_path / "worker.log")
    api = Proc([sys.executable, "-m", "api"], env, tmp_path / "api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, api)
        yield base, worker
    finally:
        api.stop()
        worker.stop()


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does it)")
    try:
        from playwright.sync_api import sync_playwright
        global expect
        from playwright.sync_api import expect
    except ImportError:
        pytest.skip("playwright is not installed (it is pinned in requirements-dev.txt)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def digits_npz(path: Path) -> Path:
    from kdcore.data import load_builtin

    train = load_builtin("digits")["train"]
    np.savez(path, x=train.x.numpy(), y=train.y.numpy())
    return path


def test_dashboard_login_upload_submit_watch_report_download(live_api, browser, digits_teacher, tmp_path):
    base, worker = live_api
    teacher_path, arch = digits_teacher
    dataset_path = digits_npz(tmp_path / "digits.npz")
    SHOTS.mkdir(exist_ok=True)
    page = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900}).new_page()
    page.set_default_timeout(30_000)
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(f"{m.text} {m.location}") if m.type == "error" else None)

    # not logged in: every page sends you to the login page
    page.goto(f"{base}/ui")
    page.wait_for_url(f"{base}/ui/login")
    page.screenshot(path=str(SHOTS / "ui_1_login.png"))
    page.fill("#api-key", KEY)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(f"{base}/ui")
    page.screenshot(path=str(SHOTS / "ui_2_jobs_empty.png"))

    # upload the teacher and the dataset through the form; each fills its id into the job form
    page.goto(f"{base}/ui/new")
    page.set_input_files("#upload-file", str(teacher_path))
    page.select_option("#upload-purpose", "teacher")
    page.click("#upload-form button[type=submit]")
    # (locator waits, not wait_for_function: the page's CSP forbids eval, and that stays on here)
    expect(page.locator("#teacher_file_id")).to_have_value(re.compile(r"^file_"))
    page.set_input_files("#upload-file", str(dataset_path))
    page.select_option("#upload-purpose", "dataset")
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#dataset_file_id")).to_have_value(re.compile(r"^file_"))
    assert "(dataset)" in page.text_content("#upload-result")
    # unlabelled inputs: two x-only files chosen at once, each uploaded as a dataset, both ids in the form
    x = np.load(dataset_path)["x"]
    inputs = [tmp_path / "inputs_a.npz", tmp_path / "inputs_b.npz"]
    np.savez(inputs[0], x=x[:60])
    np.savez(inputs[1], x=x[60:100])
    page.set_input_files("#unlabeled_files", [str(p) for p in inputs])
    expect(page.locator("#unlabeled-result li.uploaded")).to_have_count(2)
    assert page.locator("#unlabeled-result li").all_text_contents() == [
        f"inputs_a.npz → {page.input_value('#unlabeled_file_ids').split(', ')[0]}: 60 rows, 0 labelled",
        f"inputs_b.npz → {page.input_value('#unlabeled_file_ids').split(', ')[1]}: 40 rows, 0 labelled"]
    assert re.fullmatch(r"file_\w+, file_\w+", page.input_value("#unlabeled_file_ids"))
    page.fill("#teacher_arch", arch["arch"])
    page.fill("#teacher_params", '{"hidden_sizes": [128]}')
    page.fill("#student_params", '{"hidden_sizes": [16]}')
    page.fill("#epochs", "4")
    page.screenshot(path=str(SHOTS / "ui_3_new_job.png"), full_page=True)
    page.click("#job-form button[type=submit]")
    page.wait_for_url(f"{base}/ui/jobs/**")
    job_id = page.url.rsplit("/", 1)[1]
    assert page.text_content("#job-id") == job_id

    # the job page polls the API: record what it shows until the job is done
    shown_progress, shown_status, shown_epochs = [], [], set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = page.text_content("dd.field-status") if page.query_selector("dd.field-status") else None
        progress = page.eval_on_selector("#progress", "e => e.value")
        if page.query_selector("dd.field-epoch"):
            shown_epochs.add(page.text_content("dd.field-epoch"))
        shown_status.append(status)
        shown_progress.append(progress)
        if status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.2)
    assert shown_status[-1] == "succeeded", (shown_status[-5:], page.text_content("#error"), worker.output()[-3000:])
    assert len(set(shown_progress)) > 1 and shown_progress[-1] == 1, shown_progress  # the bar advanced to full
    assert shown_epochs <= {f"{k}/4 epochs" for k in range(5)}, shown_epochs  # what a running job shows
    assert page.text_content("dd.field-progress") == "100 %"
    assert page.query_selector("dd.field-epoch") is None  # a finished job shows no stale phase/epoch
    float(page.text_content("dd.field-val-accuracy"))  # the latest metrics row, from /v1/jobs/{id}/metrics
    # the result: what each run trained on (the 100 unlabelled inputs join the student's rows only)
    student_rows = page.text_content("dd.field-student-trained-on")
    assert re.fullmatch(r"\d+ labelled \+ 100 unlabelled rows, \d+ steps", student_rows), student_rows
    assert re.fullmatch(r"\d+ labelled \+ 0 unlabelled rows, \d+ steps", page.text_content("dd.field-baseline-trained-on"))
    float(page.text_content("dd.field-student-accuracy"))

    # the report, in its iframe (srcdoc, an empty sandbox: no script, opaque origin): its known heading
    # and this job's id
    assert page.get_attribute("#report", "sandbox") == ""
    frame = page.frame_locator("#report")
    frame.locator("h1").wait_for()
    assert frame.locator("h1").text_content() == "Distillation report"
    assert job_id in frame.locator("p.sub").text_content()
    page.screenshot(path=str(SHOTS / "ui_4_job.png"), full_page=True)

    # download the student; its bytes hash to the artifact sha256 the API serves as the ETag
    with page.expect_download() as dl:
        page.click("#download-safetensors")
    got = Path(dl.value.path()).read_bytes()
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}) as api:
        head = api.get(f"/v1/jobs/{job_id}/student", headers={"Range": "bytes=0-0"})
        assert head.status_code == 206
        assert head.headers["etag"] == f'"{hashlib.sha256(got).hexdigest()}"'
    assert dl.value.suggested_filename == "student.safetensors"

    # the job list shows the job as succeeded
    page.goto(f"{base}/ui")
    page.wait_for_selector(f"tr[data-job='{job_id}'] td.status:text('succeeded')")
    assert page.text_content(f"tr[data-job='{job_id}'] td.progress") == "100 %"
    page.screenshot(path=str(SHOTS / "ui_5_jobs.png"), full_page=True)
    assert page.text_content("#error") == ""
    assert not console_errors, console_errors
