"""The job report (api.report.render_report, GET /v1/jobs/{id}/report) and the live event stream
of a running job: a hand-made job renders without a database; a real worker (marked slow) runs a
job that is followed over SSE and whose report is fetched."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import time

import pytest

from api.report import render_report, verdict
from tests.factories import hand_made
from tests.utils import problem, submit, wait_for

SENTENCE = re.compile(r'<p class="verdict" id="verdict">(.*?)</p>', re.S)


def test_the_report_says_by_how_much_distillation_beat_the_baseline():
    job, metrics = hand_made()
    page = render_report(job, metrics)
    sentence = html.unescape(SENTENCE.search(page).group(1))
    assert sentence.startswith("Distillation beat the baseline by 3.33 percentage points on the test split")
    assert "94.44 %" in sentence and "91.11 %" in sentence
    for cell in ("97.22 %", "94.44 %", "91.11 %", "9,610", "1,210", "6.0 KiB", "40.0 KiB", "0.500 ms", "0.125 ms",
                 "7.94\u00d7", "4.00\u00d7", "<td>4</td>", "<td>0.3</td>"):
        assert cell in page, cell
    assert page.count('<img alt="') == 3
    assert page.count('<img alt="Loss" src="data:image/png;base64,') == 1
    assert page.count('src="data:image/png;base64,') == 3
    assert "http://" not in page and "https://" not in page
    assert "<script>" not in page and "&lt;script&gt;alert(" in page and "a&amp;b" in page


def test_the_report_says_when_no_baseline_was_trained_and_when_distillation_lost():
    job, metrics = hand_made(baseline=False)
    page = render_report(job, metrics)
    assert "No baseline was trained" in html.unescape(SENTENCE.search(page).group(1))
    assert page.count('src="data:image/png;base64,') == 3 and "<td>baseline</td>" not in page
    job, _ = hand_made()
    job["result"]["baseline"]["accuracy"], job["result"]["distillation_gain"] = 0.96, 0.9444 - 0.96
    assert verdict(job["result"]).startswith("Distillation did not beat the baseline: the student was 1.56 "
                                             "percentage points below it on the test split")


def test_arch_names_are_escaped_and_nothing_heavy_is_imported():
    job, metrics = hand_made()
    job["result"]["student"]["arch"] = '"><img src=x onerror=alert(1)>'
    page = render_report(job, metrics)
    assert "<img src=x" not in page and "&lt;img src=x" in page
    code = "import sys, api.report; print(sorted({'torch', 'fastapi', 'celery'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_a_running_jobs_stream_and_report(client, worker, digits_teacher):  # noqa: F811
    # small batches: the job must outlast the stream's first polls (0.5 s apart), so that the first epoch
    # event is seen while it still runs (with the default 128 it could end within one poll)
    job = submit(client, digits_teacher, epochs=6, batch_size=16)
    problem(client.get(f"/v1/jobs/{job['id']}/report"), 409)  # not succeeded yet
    received: list[tuple[float, dict]] = []
    statuses_seen_live: list[str] = []
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"},
                       timeout=300) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[len("data: "):])
                received.append((time.monotonic(), event))
                if event["type"] == "epoch" and not statuses_seen_live:  # the job is still running now
                    statuses_seen_live.append(client.get(f"/v1/jobs/{job['id']}").json()["status"])
    ended = time.monotonic()
    events = [e for _, e in received]
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    phases = [e["data"]["phase"] for e in events if e["type"] == "phase"]
    assert phases == ["loading", "caching_teacher", "training", "baseline", "evaluating", "exporting"]
    epochs = [(e["data"]["run"], e["data"]["epoch"]) for e in events if e["type"] == "epoch"]
    assert epochs == [(r, n) for r in ("student", "baseline") for n in range(1, 7)]
    assert statuses_seen_live == ["running"]
    first_epoch_at = next(t for t, e in received if e["type"] == "epoch")
    assert first_epoch_at < received[-1][0] <= ended  # delivered as they happened, not all at the end
    assert events[-1]["type"] == "status" and events[-1]["data"]["status"] == "succeeded"

    job = wait_for(client, job["id"], lambda j: j["status"] == "succeeded", timeout=30, worker=worker)
    resp = client.get(f"/v1/jobs/{job['id']}/report")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    page = resp.text
    gain = job["result"]["distillation_gain"]
    sentence = html.unescape(SENTENCE.search(page).group(1))
    points = f"{abs(gain) * 100:.2f} percentage points"
    assert points in sentence and "on the test split" in sentence, (sentence, gain)
    # the sentence follows the paired test's verdict on the job's own rows
    assert sentence.startswith({"better": "Distillation beat", "worse": "Distillation did not beat",
                                "not distinguishable": "Distillation and the baseline are not distinguishable"}[
        job["result"]["comparison"]["verdict"]]), sentence
    assert page.count('src="data:image/png;base64,') == 3
    assert "http://" not in page and "https://" not in page


def test_a_sweep_is_shown_as_a_heat_map_and_a_table_with_the_chosen_point():
    job, metrics = hand_made()
    points = [{"temperature": t, "alpha": a, "val_accuracy": acc, "val_agreement": 0.9, "epochs_run": 3,
               "best_epoch": 2, "stopped_early": t == 8.0}
              for (t, a), acc in zip([(2.0, 0.1), (2.0, 0.5), (8.0, 0.1), (8.0, 0.5)], [0.91, 0.93, 0.9612, 0.92])]
    job["result"]["sweep"] = {"points": points, "best": {"temperature": 8.0, "alpha": 0.1, "index": 2}}
    job["result"]["student"].update(epochs_run=3, best_epoch=2, stopped_early=True, restored_best=True)
    page = render_report(job, metrics)
    assert page.count('<img alt="Sweep heat map" src="data:image/png;base64,') == 1
    assert page.count('src="data:image/png;base64,') == 4
    assert "Sweep (4 points)" in page and "96.12 %" in page
    rows = re.findall(r"<tr><td>(8|2)</td><td>(0\.1|0\.5)</td>.*?</tr>", page)
    assert len(rows) == 4
    chosen = re.search(r"<tr><td>8</td><td>0\.1</td>(.*?)</tr>", page).group(1)
    assert "\u2713" in chosen and "<td>yes</td>" in chosen
    assert page.count("\u2713") == 1
    assert '&quot;stopped_early&quot;: true' in page and '&quot;best_epoch&quot;: 2' in page
    assert "Sweep (" not in render_report(*hand_made())  # no sweep, no section


def test_a_job_without_labels_is_judged_by_agreement_and_both_runs_say_what_they_trained_on():
    job, metrics = hand_made(baseline=False)
    result = job["result"]
    result["evaluated_on"] = "validation"
    result["student"].update(accuracy=None, agreement=0.8125, train_rows={"labeled": 0, "unlabeled": 1294})
    result["teacher"]["accuracy"] = None
    for m in metrics:
        m["values"]["val_accuracy"] = None
    page = render_report(job, metrics)
    sentence = html.unescape(SENTENCE.search(page).group(1))
    assert sentence.startswith("No row of the validation split is labelled") and "81.25 %" in sentence
    assert "<td>0 labelled + 1,294 unlabelled</td>" in page

    job, metrics = hand_made()  # a labelled test split: both runs' rows in the table
    job["result"]["student"]["train_rows"] = {"labeled": 50, "unlabeled": 1244}
    job["result"]["baseline"]["train_rows"] = {"labeled": 50, "unlabeled": 0}
    page = render_report(job, metrics)
    assert "<td>50 labelled + 1,244 unlabelled</td>" in page and "<td>50 labelled + 0 unlabelled</td>" in page
    assert "<th>trained on</th>" in page


def test_the_verdict_says_not_distinguishable_with_the_p_value_when_the_paired_test_says_so():
    job, metrics = hand_made()  # +3.33 points: 12 more rows right of 360
    job["result"]["comparison"] = {"test": "mcnemar_exact", "alpha": 0.05, "rows": 360, "student_only_right": 20,
                                   "baseline_only_right": 8, "p_value": 0.03569, "verdict": "better"}
    sentence = html.unescape(SENTENCE.search(render_report(job, metrics)).group(1))
    assert sentence.startswith("Distillation beat the baseline by 3.33 percentage points on the test split")
    assert ("the difference is significant (McNemar's exact test on the 28 rows where only one of them is right, "
            "20 only the student and 8 only the baseline: p = 0.0357 < \u03b1 = 0.05)") in sentence
    job["result"]["comparison"].update(student_only_right=30, baseline_only_right=18, p_value=0.1114,
                                       verdict="not distinguishable")
    sentence = html.unescape(SENTENCE.search(render_report(job, metrics)).group(1))
    assert sentence.startswith("Distillation and the baseline are not distinguishable (p = 0.111) on the test "
                               "split: the student was 3.33 percentage points above the baseline")
    assert "p = 0.111 \u2265 \u03b1 = 0.05" in sentence and "beat" not in sentence
    job["result"]["baseline"]["accuracy"], job["result"]["distillation_gain"] = 0.9722, 0.9444 - 0.9722
    job["result"]["comparison"].update(student_only_right=0, baseline_only_right=10, p_value=0.001953125,
                                       verdict="worse")
    assert verdict(job["result"]).startswith("Distillation did not beat the baseline: the student was 2.78")
    assert "significant" in verdict(job["result"]) and "p = 0.00195 <" in verdict(job["result"])


def test_the_report_shows_the_results_warnings_and_a_stored_result_without_them_renders_as_before():
    job, metrics = hand_made()
    before = render_report(job, metrics)
    assert 'id="warnings"' not in before and "Warning" not in before
    job["result"]["warnings"] = [
        {"code": "near_chance", "model": "student", "message": "the student's accuracy on the test split, 11.0 %, "
                                                               "is near chance (10.0 % for 10 classes) <b>"},
        {"code": "diverged", "model": "baseline", "message": "the baseline's training loss diverged"}]
    page = render_report(job, metrics)
    box = re.search(r'<div class="warnings" id="warnings">(.*?)</div>', page, re.S).group(1)
    assert box.count("<strong>Warning:</strong>") == 2
    assert "11.0 %, is near chance" in box and "&lt;b&gt;" in box and "<b>" not in box
    assert "the baseline&#x27;s training loss diverged" in box
    assert page.index('id="verdict"') < page.index('id="warnings"')


def test_the_tables_show_calibration_kl_agreement_and_macs():
    job, metrics = hand_made()
    job["result"]["student"].update(ece=0.031, mean_kl=0.1234, macs=1184)
    job["result"]["baseline"].update(ece=0.052, mean_kl=0.4321)
    page = render_report(job, metrics)
    quality = re.search(r'<table id="quality">(.*?)</table>', page, re.S).group(1)
    size = re.search(r'<table id="size">(.*?)</table>', page, re.S).group(1)
    for cell in ("<td>2.00 %</td>", "<td>3.10 %</td>", "<td>5.20 %</td>", "<td>0.1234 nats</td>",
                 "<td>0.4321 nats</td>", "<td>95.00 %</td>", "<td>91.00 %</td>"):
        assert cell in quality, cell
    for cell in ("<td>9,472</td>", "<td>1,184</td>", "<td>7.94\u00d7</td>"):
        assert cell in size, cell
    assert "ECE" in page and "MACs" in page


def test_the_finish_time_reads_as_a_time_not_an_iso_string():
    job, metrics = hand_made()
    job["finished_at"] = "2026-12-04T09:51:07.123456+00:00"
    page = render_report(job, metrics)
    assert "finished 2026-12-04 09:51 UTC" in page and "07.123456" not in page


def test_the_accuracy_plot_is_never_drawn_against_a_figure_on_another_split():
    from api.report import teacher_reference

    result = {"evaluated_on": "test", "teacher": {"accuracy": 0.97}}
    assert teacher_reference(result) is None  # a test-split figure is not a reference for validation curves
    result["teacher"]["val_accuracy"] = 0.95
    assert teacher_reference(result) == 0.95
    assert teacher_reference({"evaluated_on": "validation", "teacher": {"accuracy": 0.93}}) == 0.93


def test_the_loss_plot_goes_logarithmic_when_one_term_would_flatten_another():
    from api.report import loss_scale

    assert loss_scale([[2.3, 1.1, 0.9], [40.0, 12.0, 8.0]]) == "log"  # the soft term at T^2 dwarfs the hard one
    assert loss_scale([[2.3, 1.1, 0.9], [1.5, 1.2, 1.0]]) == "linear"
    assert loss_scale([[2.3, 1.1], [0.0, 0.0]]) == "linear"  # alpha = 1: no soft term to put on a log axis


def test_the_report_gives_the_spread_over_seeds():
    job, metrics = hand_made()
    assert 'id="seeds"' not in render_report(job, metrics)  # one seed: no section
    job["result"]["repeats"] = {
        "seeds": [3, 4, 5], "metric": "accuracy",
        "student": {"values": [0.9444, 0.95, 0.93], "mean": 0.9415, "std": 0.0103},
        "baseline": {"values": [0.9111, 0.92, 0.90], "mean": 0.9104, "std": 0.0100},
        "gain": {"values": [0.0333, 0.03, -0.01], "mean": 0.0178, "std": 0.0241}}
    page = render_report(job, metrics)
    line = html.unescape(re.search(r'<p class="seeds" id="seeds">(.*?)</p>', page).group(1))
    assert line == ("Over 3 seeds (3, 4, 5), accuracy: student 94.15 \u00b1 1.03 %, baseline 91.04 \u00b1 1.00 %; "
                    "gain +1.78 \u00b1 2.41 points, positive for 2 of 3 seeds (mean \u00b1 sample standard "
                    "deviation; the delivered student is seed 3's, scored above).")
    assert "<td>5</td><td>93.00 %</td><td>90.00 %</td><td>-1.00 points</td>" in page
