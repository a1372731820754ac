"""What every resumed job must show, checked by the reliability tests (docs/RELIABILITY.md) on a
`Service` of tests/reliability/conftest.py (its `svc` argument)."""

from __future__ import annotations

from collections import Counter

FINISHED = ("succeeded", "failed", "cancelled")


def assert_each_epoch_reported_once(svc, job_id: str, *, runs: tuple[str, ...], epochs: int) -> None:
    """One metric row, one `epoch` event per (run, epoch), and at most one `checkpoint` event per
    (run, epoch) (none is lost either, except for a checkpoint whose process died before it
    could report it), however many attempts it took."""
    expected = [(run, e) for run in runs for e in range(1, epochs + 1)]
    events = svc.events(job_id)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    epoch_events = Counter((e["data"]["run"], e["data"]["epoch"]) for e in events if e["type"] == "epoch")
    assert sorted(epoch_events) == sorted(expected) and set(epoch_events.values()) == {1}, epoch_events
    ckpt_events = Counter((e["data"]["run"], e["data"]["epoch"]) for e in events if e["type"] == "checkpoint")
    assert set(ckpt_events.values()) == {1} and set(ckpt_events) <= set(expected), ckpt_events
    metrics = [(m["run"], m["epoch"]) for m in svc.metrics(job_id)]
    assert sorted(metrics) == sorted(expected), metrics


def assert_one_artifact_per_kind(svc, job_id: str) -> None:
    kinds = Counter(a.kind for a in svc.artifacts(job_id))
    assert kinds == {"student_safetensors": 1, "student_onnx": 1, "summary": 1, "metrics": 1}, kinds
