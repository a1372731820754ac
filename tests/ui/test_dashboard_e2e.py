"""The /ui dashboard in a real browser (Debian's /usr/bin/chromium driven by Playwright's sync API)
against the real stack: `python -m api` under uvicorn and a `python -m worker` Celery process on
PostgreSQL + Redis.

One short job goes through the form and runs to success: a wrong key is refused at login, the form's
422 lands next to the fields it names and clears, the job page draws its charts from the SSE stream
(never from the metrics list), shows the report at full height and downloads files named after the job.
A second, long job is watched while running (chart points arrive before it ends) and cancelled from its
page (when, why, the kept checkpoint); a third asks for a GPU no worker serves and waits (its
waiting_reason in the list and on its page); a fourth is failed through the worker's lifecycle calls
(its error on its page). Then paging, the comparison view, an unknown job, a new
tab and a phone-width viewport.

Screenshots of every page and state go to var/screenshots/ (git-ignored) for a person to look at."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from harness.services import ROOT
from tests.factories import digits_job, mlp

pytestmark = pytest.mark.slow
KEY = "kd_ui_e2e_" + "u" * 40
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SHOTS = ROOT / "var" / "screenshots"
PHONE = {"width": 390, "height": 844}
expect = None  # playwright.sync_api.expect, imported by the browser fixture (the module loads without it)


@pytest.fixture
def live_api(live_stack):
    """The API under uvicorn and one worker process, as in tests/e2e/test_lifecycle_http.py."""
    running = live_stack(api_key=KEY, KD_HEARTBEAT_SECONDS="0.5", KD_LEASE_SECONDS="10")
    return running.base_url, running.workers[0]


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does it)")
    try:
        from playwright.sync_api import sync_playwright
        global expect
        from playwright.sync_api import expect
        expect.set_options(timeout=15_000)  # a loaded CI machine: a state change can take more than 5 s
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


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def no_horizontal_scroll(page) -> None:
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"{page.url} is {width} px wide at {page.viewport_size}"


def fail_by_hand(database_url: str, job_id: str, code: str, message: str) -> None:
    """Take a queued job through the worker's own lifecycle calls (claim, then fail), as a worker that
    met bad input would: the dashboard's failed state without a job that really has to break."""
    from sqlalchemy.orm import Session

    from jobs import lifecycle
    from jobs.db import make_engine

    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            attempt = lifecycle.claim(session, job_id=job_id, lease_seconds=60, worker="test-by-hand")
            assert attempt is not None
            assert lifecycle.fail(session, job_id=job_id, attempt=attempt, code=code, message=message)
            session.commit()
    finally:
        engine.dispose()


def test_dashboard(live_api, browser, digits_teacher, tmp_path, clean_pg):
    base, worker = live_api
    teacher_path, arch = digits_teacher
    dataset_path = digits_npz(tmp_path / "digits.npz")
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(f"{m.text} {m.location}") if m.type == "error" else None)
    page.on("pageerror", lambda e: console_errors.append(f"uncaught: {e}"))
    requests: list[tuple[str, str]] = []  # (url, accept) of every /v1 call the pages make
    page.on("request", lambda r: requests.append((r.url, r.headers.get("accept", ""))) if "/v1/" in r.url else None)
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"})

    # --- login: not logged in, every page sends you there; a wrong key says so ---------------------
    page.goto(f"{base}/ui/new")
    page.wait_for_url(re.compile(r"/ui/login\?next="))
    page.fill("#api-key", "kd_wrong_" + "x" * 40)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#error")).to_have_text(re.compile(r"^Wrong API key"))
    assert page.url.startswith(f"{base}/ui/login")
    shot(page, "01_login_wrong_key")
    page.fill("#api-key", KEY)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(f"{base}/ui/new")  # back where it was going
    assert page.evaluate("() => localStorage.getItem('kd_api_key')") == KEY  # survives a new tab (README)

    # --- the form: per-field uploads, then a 422 next to its fields, cleared on the next submit -----
    # an upload the API refuses: its reason under that field, and no id taken
    teacher_field = page.locator(".field[data-field='teacher.file_id']")
    (tmp_path / "notes.txt").write_text("not a model")
    page.set_input_files(".field[data-field='teacher.file_id'] .upload-file", str(tmp_path / "notes.txt"))
    expect(teacher_field.locator(".field-error")).to_contain_text("notes.txt: ")
    assert page.input_value("#teacher_file_id") == ""
    page.set_input_files(".field[data-field='teacher.file_id'] .upload-file", str(teacher_path))
    expect(page.locator("#teacher_file_id")).to_have_value(re.compile(r"^file_"))
    expect(teacher_field.locator(".field-error")).to_be_empty()  # cleared by the upload that worked
    page.set_input_files(".field[data-field='dataset.train_file_id'] .upload-file", str(dataset_path))
    expect(page.locator("#dataset_file_id")).to_have_value(re.compile(r"^file_"))
    assert page.input_value("#builtin") == ""  # a training file replaces the builtin
    expect(page.locator(".field[data-field='dataset.train_file_id'] .upload-result")).to_have_text(
        re.compile(r"digits\.npz → file_\w+, 1438 rows, 1438 labelled"))
    x = np.load(dataset_path)["x"]
    inputs = [tmp_path / "inputs_a.npz", tmp_path / "inputs_b.npz"]
    np.savez(inputs[0], x=x[:60])
    np.savez(inputs[1], x=x[60:100])
    page.set_input_files("#unlabeled_files", [str(p) for p in inputs])
    expect(page.locator("#unlabeled-result li.uploaded")).to_have_count(2)
    assert re.fullmatch(r"file_\w+, file_\w+", page.input_value("#unlabeled_file_ids"))
    page.fill("#teacher_arch", arch["arch"])
    page.fill("#teacher_params", '{"hidden_sizes": [128]}')
    page.fill("#student_params", '{"hidden_sizes": [16]}')
    page.fill("#alpha", "2")
    page.fill("#epochs", "0")
    page.fill("#temperature", "2, 4")
    page.fill("#learning_rate", "0.01")
    page.select_option("#loss", "js")
    with page.expect_request(lambda r: r.url.endswith("/v1/jobs") and r.method == "POST") as sent:
        page.click("#submit")
    body = sent.value.post_data_json  # what the form made of its fields
    assert body["hyperparameters"] == {"temperature": [2, 4], "alpha": 2, "loss": "js", "epochs": 0,
                                       "batch_size": 128, "learning_rate": 0.01}, body
    assert body["dataset"]["train_file_id"].startswith("file_") and "builtin" not in body["dataset"]
    assert body["resources"] == {"device": "cpu"} and body["baseline"] is True
    alpha_error = page.locator(".field[data-field='hyperparameters.alpha'] .field-error")
    epochs_error = page.locator(".field[data-field='hyperparameters.epochs'] .field-error")
    expect(alpha_error).to_have_text(re.compile(r"between 0 and 1"))
    expect(epochs_error).not_to_be_empty()
    assert page.get_attribute("#alpha", "aria-invalid") == "true"
    shot(page, "02_form_with_errors")
    page.fill("#alpha", "0.3")
    page.fill("#temperature", "4")
    page.click("#submit")
    expect(alpha_error).to_be_empty()  # cleared: alpha is fine now
    expect(epochs_error).not_to_be_empty()
    page.fill("#epochs", "4")
    page.click("#submit")
    page.wait_for_url(f"{base}/ui/jobs/**")
    job_id = page.url.rsplit("/", 1)[1]
    assert page.text_content("#job-id") == job_id

    # --- the job page: SSE drives the charts and the log; the result, report and downloads ---------
    try:
        expect(page.locator("#status-badge")).to_have_text("succeeded", timeout=60_000)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{console_errors}\n{worker.output()[-2000:]}") from None
    metrics = api.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
    runs = {m["run"] for m in metrics}
    assert runs == {"student", "baseline"}, runs
    # a point per (run, epoch), each drawn from an `epoch` event of the stream
    expect(page.locator("#chart-loss circle.pt")).to_have_count(len(metrics))
    expect(page.locator("#chart-accuracy circle.pt")).to_have_count(len(metrics))
    assert page.locator("#chart-loss circle.pt[data-run='student']").count() == 4
    assert any("/events" in url and "text/event-stream" in accept for url, accept in requests), requests
    assert not [url for url, _ in requests if "/metrics" in url], "the job page polled the metrics list"
    expect(page.locator("#events li[data-type='status']").last).to_contain_text("succeeded")
    assert page.locator("#events li[data-type='epoch']").count() == len(metrics)
    assert page.locator("#state").is_hidden()
    assert re.fullmatch(r"\d+\.\d\d %", page.text_content("dd.field-student-accuracy"))
    # the headline: the student's accuracy, the gain with the baseline's, the teacher's, the size
    assert page.locator("#headline .metric-label").all_text_contents() == ["Student", "Gain over baseline", "Teacher", "Size"]
    assert re.fullmatch(r"\d+\.\d %", page.text_content("#headline .metric.student .metric-value"))
    assert page.text_content("#headline .metric:nth-child(2) .metric-value") == page.text_content("dd.field-gain-over-baseline")
    assert re.fullmatch(r"[+−±]\d+\.\d pts", page.text_content("dd.field-gain-over-baseline"))
    assert re.fullmatch(r"\d+ labelled \+ 100 unlabelled rows, \d+ steps", page.text_content("dd.field-student-trained-on"))
    assert page.text_content("dd.field-teacher-student") == "mlp [128] → mlp [16]"
    assert re.search(r'"hidden_sizes": \[\s*16\s*\]', page.text_content("#spec"))  # the spec, as JSON
    expect(page.locator("#cancel")).to_be_hidden()
    # the report: sandboxed (no script token), its known heading, and shown whole (the frame is as tall
    # as its document: no scrollbar inside the page)
    assert page.get_attribute("#report", "sandbox") == "allow-same-origin"
    frame = page.frame_locator("#report")
    expect(frame.locator("h1")).to_have_text("Distillation report")
    assert job_id in frame.locator("p.sub").text_content()
    expect(page.locator("#report")).to_have_attribute("style", re.compile(r"height: \d+"))  # fitted on load
    inner = page.frame(url="about:srcdoc").evaluate("() => document.documentElement.scrollHeight")
    outer = page.locator("#report").bounding_box()["height"]
    assert inner > 600 and outer >= inner, (inner, outer)
    shot(page, "03_job_succeeded")
    with page.expect_download() as dl:
        page.click("#download-safetensors")
    assert dl.value.suggested_filename == f"{job_id}-student.safetensors"
    got = Path(dl.value.path()).read_bytes()
    head = api.get(f"/v1/jobs/{job_id}/student", headers={"Range": "bytes=0-0"})
    assert head.headers["etag"] == f'"{hashlib.sha256(got).hexdigest()}"'
    with page.expect_download() as dl:
        page.click("#download-metrics")
    assert dl.value.suggested_filename == f"{job_id}-metrics.csv"

    # --- a long sweep, watched running and cancelled from its page --------------------------------
    teacher_file = api.get(f"/v1/jobs/{job_id}").json()["spec"]["teacher"]["file_id"]
    long_job = api.post("/v1/jobs", json=digits_job(  # a sweep
        teacher_file, arch=arch, student=mlp(32),
        hyperparameters={"epochs": 1000, "temperature": [2, 4], "alpha": 0.5})).json()["id"]
    page.goto(f"{base}/ui/jobs/{long_job}")
    expect(page.locator("#chart-loss circle.pt").nth(2)).to_be_attached(timeout=60_000)  # 3 epochs, live
    expect(page.locator("#status-badge")).to_have_text("running")
    assert page.locator("#chart-loss circle.pt").first.get_attribute("data-run") == "student T=2 α=0.5"  # its point
    expect(page.locator("#progress-text")).to_contain_text("left")
    shot(page, "04_job_running")
    page.click("#cancel")
    expect(page.locator("#status-badge")).to_have_text("cancelled")
    state = page.locator("#state")
    expect(state.locator(".checkpoint")).to_have_text(re.compile(r"^Kept checkpoint: sweep point 1 after epoch \d+ \("))
    expect(state.locator(".why")).to_contain_text("cancel requested")
    expect(state).to_contain_text(re.compile(r"^Cancelled .+ \((just now|\d+ s ago)\)\."))
    expect(page.locator("#cancel")).to_be_hidden()
    shot(page, "05_job_cancelled")

    # --- a job no worker can take: queued, and why --------------------------------------------------
    waiting_job = api.post("/v1/jobs", json={"teacher": {"file_id": teacher_file, **arch},
                                             "resources": {"device": "cuda", "gpus": 1}}).json()["id"]
    page.goto(f"{base}/ui")
    row = page.locator(f"tr[data-job='{waiting_job}']")
    expect(row.locator(".badge")).to_have_text("queued")
    expect(row.locator(".waiting")).to_contain_text("no live worker serves device=cuda gpus=1")
    done = page.locator(f"tr[data-job='{job_id}']")
    expect(done.locator(".badge")).to_have_text("succeeded")
    assert re.fullmatch(r"\d+\.\d %", done.locator("td.accuracy").text_content())
    assert re.fullmatch(r"[+−±]\d+\.\d pts", done.locator("td.gain").text_content())
    assert re.fullmatch(r"[\d.]+ k? ?params\d+× smaller", done.locator("td.size").text_content())
    assert re.fullmatch(r"\d+ s|\d+ min \d\d s", done.locator("td.duration").text_content())
    assert re.fullmatch(r"just now|\d+ s ago|\d+ min ago", done.locator("td.created").text_content())
    assert done.locator("td.archs").text_content() == "mlp [128] → mlp [16]"
    expect(page.locator(f"tr[data-job='{long_job}'] .badge")).to_have_text("cancelled")
    no_horizontal_scroll(page)
    shot(page, "06_list")
    page.goto(f"{base}/ui/jobs/{waiting_job}")
    expect(page.locator("#state .waiting")).to_contain_text("no live worker serves device=cuda gpus=1")
    expect(page.locator("#status-badge")).to_have_text("queued")
    shot(page, "07_job_queued")
    page.click("#cancel")
    expect(page.locator("#state .checkpoint")).to_have_text("It never started, so there is no checkpoint.")

    # --- a failed job: its error, in words ---------------------------------------------------------
    failed_job = api.post("/v1/jobs", json={"teacher": {"file_id": teacher_file, **arch},
                                            "resources": {"device": "cuda", "gpus": 1}}).json()["id"]
    fail_by_hand(clean_pg, failed_job, "invalid_input", "the teacher's logits hold NaN")
    page.goto(f"{base}/ui/jobs/{failed_job}")
    expect(page.locator("#status-badge")).to_have_text("failed")
    expect(page.locator("#state")).to_contain_text("invalid_input: the teacher's logits hold NaN")
    expect(page.locator("#events li.level-error")).to_contain_text("the teacher's logits hold NaN")
    assert page.locator(".charts").is_hidden() and page.locator("#live").is_hidden()  # no epoch, no progress
    shot(page, "07b_job_failed")

    # --- paging with the API's cursor: four jobs, three a page ----------------------------------------
    page.goto(f"{base}/ui?limit=3")
    expect(page.locator("#jobs tbody tr")).to_have_count(3)
    assert page.locator("#jobs tbody tr").first.get_attribute("data-job") == failed_job  # newest first
    expect(page.locator(f"tr[data-job='{failed_job}'] td.status .small")).to_have_text("invalid_input")
    expect(page.locator("#newer")).to_be_disabled()
    expect(page.locator(".pager")).to_be_visible()
    page.click("#older")
    expect(page.locator("#jobs tbody tr")).to_have_count(1)
    assert page.locator("#jobs tbody tr").first.get_attribute("data-job") == job_id
    expect(page.locator("#older")).to_be_disabled()
    expect(page.locator("#page-info")).to_have_text("page 2")
    page.click("#newer")
    expect(page.locator("#jobs tbody tr")).to_have_count(3)

    # --- the comparison: the one succeeded job's student, its baseline and its teacher -------------
    page.goto(f"{base}/ui/compare")
    expect(page.locator("#scatter .pt-student")).to_have_count(1)
    expect(page.locator("#scatter .pt-teacher")).to_have_count(1)
    expect(page.locator("#scatter .pt-baseline")).to_have_count(1)
    expect(page.locator("#compare-table tbody tr")).to_have_count(3)
    assert page.locator("#compare-table tbody tr.kind-teacher td").nth(2).text_content() == "9.6 k"  # 64·128+128+128·10+10
    shot(page, "08_compare")
    page.select_option("#x-axis", "latency_ms")
    expect(page.locator("#scatter text.label").first).to_contain_text("latency")
    expect(page.locator("#scatter .pt-teacher")).to_have_count(1)

    # --- an unknown job ------------------------------------------------------------------------------
    page.goto(f"{base}/ui/jobs/job_doesnotexist")
    expect(page.locator("#status-badge")).to_have_text("unknown")
    expect(page.locator("#state")).to_contain_text("There is no job job_doesnotexist for this API key")
    assert page.locator("#job").is_hidden() and page.locator("#cancel").is_hidden()
    shot(page, "09_job_unknown")

    # --- a job opened in a new tab is still logged in ------------------------------------------------
    tab = context.new_page()
    tab.goto(f"{base}/ui/jobs/{job_id}")
    expect(tab.locator("#status-badge")).to_have_text("succeeded")
    assert tab.url == f"{base}/ui/jobs/{job_id}"
    tab.close()

    # --- phone width: no page scrolls sideways ------------------------------------------------------
    page.set_viewport_size(PHONE)
    for path, name in ((f"/ui", "10_phone_list"), (f"/ui/jobs/{job_id}", "11_phone_job"),
                       ("/ui/new", "12_phone_form"), ("/ui/compare", "13_phone_compare")):
        page.goto(base + path)
        page.wait_for_load_state("networkidle") if path != f"/ui/jobs/{job_id}" else expect(
            page.frame_locator("#report").locator("h1")).to_be_visible()
        no_horizontal_scroll(page)
        shot(page, name)

    # --- a saved key the API no longer takes: back to the login page, which says why -----------------
    page.set_viewport_size({"width": 1200, "height": 900})
    page.evaluate("() => localStorage.setItem('kd_api_key', 'kd_revoked_' + 'r'.repeat(40))")
    page.goto(f"{base}/ui/compare")
    page.wait_for_url(re.compile(r"/ui/login\?expired=1&next=%2Fui%2Fcompare"))
    expect(page.locator("#error")).to_contain_text("The API refused the saved key")
    assert page.evaluate("() => localStorage.getItem('kd_api_key')") is None

    # --- a shared computer: the key only in this tab; a new tab asks again; Log out forgets it ------
    page.fill("#api-key", KEY)
    page.check("#shared-computer")
    page.click("#login-form button[type=submit]")
    page.wait_for_url(f"{base}/ui/compare")
    assert page.evaluate("() => [localStorage.getItem('kd_api_key'), sessionStorage.getItem('kd_api_key')]") == [None, KEY]
    tab = context.new_page()
    tab.goto(f"{base}/ui/jobs/{job_id}")
    tab.wait_for_url(re.compile(r"/ui/login\?next="))
    tab.close()
    page.click("#logout")
    page.wait_for_url(f"{base}/ui/login")
    assert page.evaluate("() => sessionStorage.getItem('kd_api_key')") is None
    page.goto(f"{base}/ui")
    page.wait_for_url(re.compile(r"/ui/login\?next="))

    expected = ("401 (Unauthorized)", "404 (Not Found)", "422 (Unprocessable")  # the wrong key, the unknown job, the 422
    assert not [e for e in console_errors if not any(x in e for x in expected)], console_errors
    api.close()
