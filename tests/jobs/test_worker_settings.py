"""The worker's settings for queues and presence: KD_WORKER_QUEUES, KD_WORKER_HEARTBEAT_SECONDS,
KD_WORKER_STALE_SECONDS."""

from __future__ import annotations

import os

import pytest

from jobs.settings import Settings


@pytest.fixture(autouse=True)
def no_kd_environment(monkeypatch):
    for name in [n for n in os.environ if n.startswith("KD_")]:
        monkeypatch.delenv(name)


def test_defaults_serve_everything_and_beat_every_ten_seconds():
    s = Settings()
    assert s.worker_queue_list is None
    assert (s.worker_heartbeat_seconds, s.worker_stale_seconds) == (10, 30)


def test_worker_queues_is_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv("KD_WORKER_QUEUES", " kd.cuda.1, kd.cuda.2 ,")
    assert Settings().worker_queue_list == ["kd.cuda.1", "kd.cuda.2"]
    monkeypatch.setenv("KD_WORKER_QUEUES", "")
    assert Settings().worker_queue_list is None


def test_a_worker_heartbeat_must_be_shorter_than_the_staleness_window():
    with pytest.raises(ValueError, match="KD_WORKER_HEARTBEAT_SECONDS"):
        Settings(worker_heartbeat_seconds=30, worker_stale_seconds=30)
