"""Claim a job, drive kdcore, and write what happens through the fenced state machine.

Every write after the claim carries this worker's attempt number: when one changes nothing, the
lease was lost (another worker re-claimed the job) and this worker stops at once. A heartbeat
thread extends the lease every KD_HEARTBEAT_SECONDS and, between beats, reads the cancellation flag
every CANCEL_POLL_SECONDS (one primary-key read); the trainer asks `should_stop` at every step, so
cancellation takes effect at the first step boundary after that read (about a second after the
request) and the last checkpoint is kept.

Attempts of one job can overlap (a stalled worker wakes after its job was re-claimed), so what is
not fenced by the database is kept apart per attempt: the scratch directory
`{data_dir}/work/{job}/attempt-{n}` and the published files `jobs/{job}/attempt-{n}/...`. The
checkpoints (`jobs/{job}/checkpoints/` in the store, mirrored into and out of the attempt's
directory by worker/checkpoint_mirror.py) are shared, since a resumed attempt, on this machine or
another, needs them. So each upload or delete there asks `_hold_lease` just before it takes effect
(the rename; S3's last request): a look at the clock while the lease as last renewed has more than
LEASE_MARGIN_SECONDS left, else one fenced renewal, which raises LeaseLost for a stale attempt. A
stalled attempt that wakes after its lease ran out writes no checkpoint, unless it stalled exactly
between that check and the rename (or inside S3's request), and even then only the state the new
attempt computes for that epoch as well. The trainer reports each epoch (fenced) before it
checkpoints it; the price of that order: a resumed attempt may report an epoch again, so epoch and
checkpoint events are written once per (run, epoch) and metric rows replaced, never duplicated.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import shutil
import threading
import time
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from jobs import files_repo, jobs_repo, lifecycle, spec_files
from jobs.artifact_store import ArtifactStore
from jobs.errors import LeaseLost, NotFound
from jobs.settings import Settings
from jobs.tables import utcnow
from kdcore.errors import KDError
from kdcore.onnx_sandbox import GraphLimits
from kdcore.results import DistillResult, ModelReport
from kdcore.pipeline import (EVENT_LEVELS, ONNX_FILE, STUDENT_FILE, SUMMARY_FILE, METRICS_FILE, PipelineCallbacks,
                             run_distillation)
from kdcore.spec import DistillSpec
from kdcore.trainer import Stopped
from worker.checkpoint_mirror import CheckpointMirror
from worker.context import WorkerContext, current as current_context

log = logging.getLogger("worker")
PROGRESS_INTERVAL_SECONDS = 1.0  # progress rows are throttled; epochs and phases always write
ARTIFACTS = {STUDENT_FILE: "student_safetensors", ONNX_FILE: "student_onnx",
             SUMMARY_FILE: "summary", METRICS_FILE: "metrics"}
# Share of the progress bar each phase owns (training and baseline split what is left).
SETUP_SHARE, FINISH_SHARE = 0.05, 0.05
EPOCH_KEY = ("run", "epoch")  # epoch and checkpoint events: one per (run, epoch), whichever attempt
# A job past its wall-clock limit stops at the next step boundary, or its ONNX teacher's child is
# killed. Work that never asks should_stop (a stuck library call) is failed by the heartbeat thread
# this long after the limit: the job ends for the user, its lease stops being renewed, and every
# later write of the stuck attempt is fenced out.
STUCK_GRACE_SECONDS = 60.0
# How often the heartbeat thread reads the job's cancel flag between its beats: a cancel reaches
# should_stop within this (plus one database read), not within KD_HEARTBEAT_SECONDS. A read of one
# row by primary key, never a query per training step.
CANCEL_POLL_SECONDS = 0.5
# Writes that only report (phase and informational events, a checkpoint's event, throttled progress)
# wait up to this long to be committed with the next write that must go at once (the claim, the epoch's
# report, the job's end), or by the heartbeat thread when none comes: a tiny job's dozen reports cost a
# commit or two instead of a dozen (bench/RESULTS.md, B6). Well under the event stream's poll
# interval (0.5 s), so a watcher sees them no later in practice; each keeps the time it was made.
REPORT_DELAY_SECONDS = 0.25
# A checkpoint's upload or delete goes ahead on the worker's own clock while the lease as last renewed
# (measured from before the claim's or the heartbeat's request) has more than this left; past that
# (the process stalled, or heartbeats failed) the check renews the lease first, which fails for an
# attempt that another worker re-claimed. Covers a difference in rate between the workers' clocks and
# the time a rename takes; with the defaults (a 60 s lease renewed every 5 s) it is never reached.
LEASE_MARGIN_SECONDS = 1.0


def run_job(job_id: str, ctx: WorkerContext | None = None) -> str:
    """Run one job if this worker can claim it. Returns what happened (for logs and tests):
    not_claimed, succeeded, failed, cancelled or lease_lost. `ctx`: the worker process's
    (worker/context.py) by default."""
    ctx = ctx or current_context()
    leased_at = time.monotonic()  # the lease runs from no earlier than this (the claim's own clock reading)
    with ctx.sessions() as s:
        attempt = lifecycle.claim(s, job_id=job_id, lease_seconds=ctx.cfg.lease_seconds, worker=ctx.name)
        s.commit()
    if attempt is None:
        log.info("job %s: not claimed (another worker owns it, or it is finished)", job_id)
        return "not_claimed"
    job = JobRun(job_id, attempt, cfg=ctx.cfg, sessions=ctx.sessions, store=ctx.store, name=ctx.name,
                 leased_at=leased_at)
    return job.run()


class JobRun(PipelineCallbacks):
    """One attempt at one job: the pipeline's callbacks, writing through fenced updates."""

    def __init__(self, job_id: str, attempt: int, *, cfg: Settings, sessions: sessionmaker[Session],
                 store: ArtifactStore, name: str, leased_at: float | None = None):
        self.job_id, self.attempt, self.cfg, self.sessions, self.store = job_id, attempt, cfg, sessions, store
        self.name = name
        # time.monotonic() no later than the lease's last renewal began (the claim's, then each beat's)
        self.leased_at = time.monotonic() if leased_at is None else leased_at
        self.lease_lost = threading.Event()
        self.cancel_requested = threading.Event()
        self.stop_heartbeat = threading.Event()
        self.phase = "loading"
        self.started = time.monotonic()
        self.last_progress = 0.0
        self.last_fraction = 0.0  # the bar never moves back (a sweep replays its chosen point's epochs)
        self.points: int | None = None  # sweep points (StepInfo.points); None outside a sweep
        self.point: int | None = None
        self.baseline = True
        self.epochs = 0
        self.repeats = 1  # hyperparameters.repeats: seeds the student (and the baseline) are trained with
        self.run_epochs: int | None = None  # epochs of the run in progress, once known (EpochMetrics.epochs)
        self.current_run = "student"  # the trainer's run the next checkpoint belongs to
        self.checkpoints: CheckpointMirror | None = None
        # the job's wall-clock limit, on this process's monotonic clock (set once the row is read)
        self.deadline: float | None = None
        self.timed_out = threading.Event()
        # Reports not yet written ((fn, kwargs) in order), since when, and the lock that lets one
        # thread at a time write for this attempt, so the job's events keep the order they were made in.
        self.pending: list[tuple] = []
        self.pending_since: float | None = None
        self.writing = threading.Lock()
        self.wake = threading.Event()  # wakes the heartbeat thread: a report waits, or the attempt ends

    # --- the attempt --------------------------------------------------------------------------
    def run(self) -> str:
        heartbeat = threading.Thread(target=self._heartbeat_loop, name=f"heartbeat-{self.job_id}", daemon=True)
        heartbeat.start()
        # This attempt's own scratch directory: a stale attempt of the same job that stops on
        # this machine removes its directory, never the one the attempt that owns the job uses.
        work = self.cfg.data_dir / "work" / self.job_id / f"attempt-{self.attempt}"
        _remove_older_attempts(work)
        try:
            # Nothing is read from the store in place: inputs and checkpoints are copied into this
            # attempt's directory, so a worker shares no disk with the API or other workers.
            spec = self._load_spec(work / "inputs")
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.timed_out.set()
                raise Stopped("the job's wall-clock limit had passed before this attempt started")
            self.baseline, self.epochs = spec.baseline, spec.hyperparameters.epochs
            self.repeats = spec.hyperparameters.repeats
            self.on_event("claimed", f"attempt {self.attempt} started on {self.name}", {"attempt": self.attempt})
            self.checkpoints = CheckpointMirror(self.store, prefix=f"jobs/{self.job_id}/checkpoints",
                                                local_dir=work / "checkpoints", before_write=self._hold_lease)
            self.checkpoints.pull()
            result = run_distillation(spec, out_dir=work / "out", callbacks=self,
                                      checkpoint_dir=work / "checkpoints", extra_metadata={"job_id": self.job_id},
                                      teacher_limits=self._teacher_limits())
            self._publish(work / "out", result)
            return "succeeded"
        except (Stopped, LeaseLost):
            if self.timed_out.is_set() and not self.lease_lost.is_set():
                return self._fail("time_limit", self._time_limit_message())
            return self._stopped()
        except KDError as e:
            return self._fail("invalid_input", str(e))
        except FloatingPointError as e:  # the loss diverged: a spec problem, not a crash
            return self._fail("diverged", str(e))
        except Exception as e:
            outcome = self._fail("internal_error", f"{type(e).__name__}: {e}")
            if outcome == "lease_lost":  # a stale attempt: its error is a consequence (e.g. the attempt
                # that took over removed this one's scratch directory), not the job's failure
                log.warning("job %s attempt %d lost its lease (then %s: %s); stopping without further writes",
                            self.job_id, self.attempt, type(e).__name__, e)
            else:
                log.exception("job %s attempt %d failed", self.job_id, self.attempt)
            return outcome
        finally:
            self.stop_heartbeat.set()
            self.wake.set()
            heartbeat.join(timeout=5)
            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(OSError):
                work.parent.rmdir()  # the job's directory, once no attempt uses it

    def _load_spec(self, inputs: Path) -> DistillSpec:
        # Every read inside the one session block: a session used after its block begins a new
        # transaction that nobody ends, and its connection stays "idle in transaction" (holding
        # its table locks) for the whole job.
        with self.sessions() as s:
            job = jobs_repo.load_for_worker(s, job_id=self.job_id)
            # counted from the job's first start: a resumed attempt does not get a fresh limit
            elapsed = (utcnow() - job.started_at).total_seconds() if job.started_at is not None else 0.0
            self.deadline = time.monotonic() + self.cfg.job_time_limit_seconds - max(elapsed, 0.0)

            def path_of(field, where: str, file_id: str) -> str:
                try:
                    row = files_repo.get(s, tenant_id=job.tenant_id, file_id=file_id)
                except NotFound:
                    raise KDError(f"file {file_id} no longer exists", field=where) from None
                # a verified copy (the sha256 recorded at upload) in this attempt's own directory
                return str(self.store.fetch(row.storage_key, inputs / row.id, sha256=row.sha256))

            raw = spec_files.to_kdcore(job.spec, path_of)  # the same table the API checked them with
        return DistillSpec.from_dict(raw)  # `device` as decided at submission (migration 0007 for older jobs)

    def _publish(self, out: Path, result: DistillResult) -> None:
        """Artifacts to the store, then rows and success in one transaction.

        The files go under this attempt's own keys: a worker that lost its lease after its last
        fenced write (paused while exporting) must not overwrite what the attempt that won
        published, and its files are removed again when its fenced transaction changes nothing."""
        stored = []
        try:
            for filename, kind in ARTIFACTS.items():
                if (out / filename).exists():
                    key = f"jobs/{self.job_id}/attempt-{self.attempt}/{filename}"
                    stored.append((kind, self.store.put_file(key, out / filename)))
            with self.writing, self.sessions() as s:
                self._fenced(self._drain(s, progress={"phase": "exporting", "fraction": 1.0, "eta_seconds": 0.0,
                                                      "epochs": self.epochs}))
                self._fenced(lifecycle.add_artifacts(s, job_id=self.job_id, attempt=self.attempt, artifacts=[
                    {"kind": kind, "storage_key": obj.key, "bytes": obj.bytes, "sha256": obj.sha256}
                    for kind, obj in stored]))
                self._fenced(lifecycle.add_event(s, job_id=self.job_id, attempt=self.attempt, type="result",
                                                 message=_outcome_line(result), data=None) is not None)
                self._fenced(lifecycle.succeed(s, job_id=self.job_id, attempt=self.attempt,
                                               result=result.to_dict()))
                s.commit()
        except LeaseLost:  # rolled back: no row names these files
            for _, obj in stored:
                self.store.delete(obj.key)
            raise

    def _stopped(self) -> str:
        if self.lease_lost.is_set():
            log.warning("job %s attempt %d lost its lease; stopping without further writes",
                        self.job_id, self.attempt)
            return "lease_lost"
        with self.writing, self.sessions() as s:
            self._drain(s)
            lifecycle.add_event(s, job_id=self.job_id, attempt=self.attempt, type="stopped",
                                message="stopped at a step boundary; the last checkpoint is kept")
            done = lifecycle.finish_cancelled(s, job_id=self.job_id, attempt=self.attempt)
            s.commit()
        return "cancelled" if done else "lease_lost"

    def _teacher_limits(self) -> GraphLimits:
        import torch

        return GraphLimits(memory_bytes=self.cfg.teacher_memory_bytes, load_seconds=self.cfg.teacher_batch_timeout_seconds,
                           batch_seconds=self.cfg.teacher_batch_timeout_seconds,
                           threads=self.cfg.teacher_threads or torch.get_num_threads())

    def _time_limit_message(self) -> str:
        limit = self.cfg.job_time_limit_seconds
        return (f"the job ran past its wall-clock limit of {limit:g} s (KD_JOB_TIME_LIMIT_SECONDS), counted from "
                f"its first start; it was stopped in phase {self.phase}. Ask for fewer epochs or a smaller "
                "student, or have the operator raise the limit")

    def _fail(self, code: str, message: str) -> str:
        with self.writing, self.sessions() as s:
            self._drain(s)
            done = lifecycle.fail(s, job_id=self.job_id, attempt=self.attempt, code=code, message=message)
            s.commit()
        return "failed" if done else "lease_lost"

    def _heartbeat_loop(self) -> None:
        """A beat (lease renewal, which also reports the cancel flag) every KD_HEARTBEAT_SECONDS;
        between beats, a read of the cancel flag every CANCEL_POLL_SECONDS; at every tick, the
        job's time limit; and the reports that waited REPORT_DELAY_SECONDS."""
        next_beat = time.monotonic() + self.cfg.heartbeat_seconds
        next_poll = time.monotonic() + CANCEL_POLL_SECONDS
        while True:
            due = min(next_beat, next_poll)
            since = self.pending_since
            if since is not None:
                due = min(due, since + REPORT_DELAY_SECONDS)
            self.wake.wait(max(0.0, due - time.monotonic()))
            self.wake.clear()
            if self.stop_heartbeat.is_set():
                return
            since = self.pending_since
            if since is not None and time.monotonic() >= since + REPORT_DELAY_SECONDS:
                self._flush_reports()
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.cfg.heartbeat_seconds
                next_poll = time.monotonic() + CANCEL_POLL_SECONDS
                try:
                    beat = self._renew_lease()
                except Exception:  # a database blip: try again next beat; the lease has slack
                    log.exception("job %s: heartbeat failed", self.job_id)
                    continue
                if not beat.alive:
                    return
                if beat.cancel_requested:
                    self.cancel_requested.set()
            elif time.monotonic() >= next_poll and not self.cancel_requested.is_set():
                next_poll = time.monotonic() + CANCEL_POLL_SECONDS
                try:
                    with self.sessions() as s:
                        if lifecycle.cancel_requested(s, job_id=self.job_id, attempt=self.attempt):
                            self.cancel_requested.set()
                except Exception:  # the next beat reports the flag (and logs a failing database)
                    log.debug("job %s: cancel poll failed", self.job_id, exc_info=True)
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.timed_out.set()  # should_stop says so from now on
                if time.monotonic() > self.deadline + STUCK_GRACE_SECONDS:
                    self._fail_stuck()
                    return

    def _renew_lease(self) -> lifecycle.HeartbeatResult:
        """One heartbeat: the lease extended by KD_LEASE_SECONDS (and `leased_at` moved up), or
        lease_lost set when another attempt owns the job."""
        started = time.monotonic()
        with self.sessions() as s:
            beat = lifecycle.heartbeat(s, job_id=self.job_id, attempt=self.attempt,
                                       lease_seconds=self.cfg.lease_seconds)
            s.commit()
        if beat.alive:
            self.leased_at = max(self.leased_at, started)
        else:
            self.lease_lost.set()
        return beat

    def _hold_lease(self) -> None:
        """Return only while this attempt owns the job; LeaseLost otherwise. Asked just before a
        checkpoint's upload or delete takes effect in the store, which other attempts read: no
        database round trip while more than LEASE_MARGIN_SECONDS of the lease as last renewed are
        left, one fenced renewal after that (a database error propagates, as any write's does)."""
        if not self.lease_lost.is_set():
            if time.monotonic() < self.leased_at + self.cfg.lease_seconds - LEASE_MARGIN_SECONDS:
                return
            if self._renew_lease().alive:
                return
        raise LeaseLost(f"job {self.job_id}: attempt {self.attempt} no longer owns the job; its checkpoint "
                        "stays out of the store")

    def _fail_stuck(self) -> None:
        """The attempt did not stop within STUCK_GRACE_SECONDS of its limit: end the job from here.
        The stuck thread's later writes are fenced out (the job is no longer running)."""
        log.error("job %s attempt %d: still running %.0f s past its time limit; failing it", self.job_id,
                  self.attempt, STUCK_GRACE_SECONDS)
        try:
            with self.sessions() as s:
                lifecycle.fail(s, job_id=self.job_id, attempt=self.attempt, code="time_limit",
                               message=self._time_limit_message() + " (it did not stop within "
                               f"{STUCK_GRACE_SECONDS:g} s; the worker may need a restart)")
                s.commit()
        finally:
            self.lease_lost.set()

    def _fenced(self, ok: bool | int | None) -> None:
        try:
            lifecycle.require_lease(ok, job_id=self.job_id, attempt=self.attempt)
        except LeaseLost:
            self.lease_lost.set()
            raise

    def _write(self, fn, *, report: bool = False, **kwargs) -> None:
        self._write_all((fn, kwargs), report=report)

    def _write_all(self, *writes, report: bool = False) -> None:
        """Fenced writes `(fn, kwargs)` in one transaction (one round of commits for what belongs
        together, e.g. a phase's event and its progress), after the reports still waiting.
        `report`: these only report, so they may wait (REPORT_DELAY_SECONDS) to go with the next
        write; they are stamped now."""
        if report:
            now = utcnow()
            with self.writing:
                self.pending.extend((fn, {**kwargs, "now": now}) for fn, kwargs in writes)
                if self.pending_since is None:
                    self.pending_since = time.monotonic()
                    self.wake.set()
            return
        with self.writing, self.sessions() as s:
            ok = self._drain(s)
            for fn, kwargs in writes:
                result = fn(s, job_id=self.job_id, attempt=self.attempt, **kwargs)
                ok = lifecycle.wrote(result) and ok
            s.commit()
        self._fenced(ok)

    def _drain(self, s: Session, progress: dict | None = None) -> bool:
        """Write the waiting reports in `s` (the caller holds `writing` and commits); False when one
        was fenced out (the lease is lost). `progress`: the progress row this transaction ends with."""
        pending, self.pending, self.pending_since = self.pending, [], None
        # The progress row is one value: within one transaction only its last write is ever seen, the
        # transaction's own or else the last report's; it goes with the fence.
        if progress is None:
            progress = next((kw["progress"] for fn, kw in reversed(pending) if fn is lifecycle.set_progress), None)
        # Every transaction of the attempt starts here: one fenced UPDATE (updated_at = now, the
        # progress) that the writes after it in the transaction rely on instead of an UPDATE each
        # (jobs/lifecycle.py, fence).
        if not lifecycle.fence(s, job_id=self.job_id, attempt=self.attempt, progress=progress):
            return False
        # in the order they were made (each with its own time), the progress reports aside (written with
        # the fence): a run of plain events in one INSERT, any other report (a checkpoint's event) on its own
        ok = True
        writes = [(fn, kwargs) for fn, kwargs in pending if fn is not lifecycle.set_progress]
        for plain, run in itertools.groupby(writes, key=lambda write: write[0] is lifecycle.add_event):
            if plain:
                ok = lifecycle.wrote(lifecycle.add_events(s, job_id=self.job_id, attempt=self.attempt,
                                                          events=[kwargs for _, kwargs in run])) and ok
            else:
                for fn, kwargs in run:
                    ok = lifecycle.wrote(fn(s, job_id=self.job_id, attempt=self.attempt, **kwargs)) and ok
        return ok

    def _flush_reports(self) -> None:
        """The heartbeat thread's write of reports that waited long enough. A lost lease is seen by
        should_stop; a failing database is tried again after another delay. While the job's thread
        writes (and so takes the reports with it), this gives up after a moment: the lease's beat
        must not wait behind a slow write."""
        if not self.writing.acquire(timeout=0.05):
            return
        try:
            pending = list(self.pending)
            try:
                with self.sessions() as s:
                    ok = self._drain(s)
                    s.commit()
            except Exception:
                self.pending[:0] = pending
                self.pending_since = time.monotonic()
                log.exception("job %s: writing its progress reports failed", self.job_id)
                return
        finally:
            self.writing.release()
        if not ok:
            self.lease_lost.set()

    # --- pipeline callbacks ---------------------------------------------------------------------
    def should_stop(self) -> bool:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.timed_out.set()
        return self.lease_lost.is_set() or self.cancel_requested.is_set() or self.timed_out.is_set()

    def on_phase(self, phase: str) -> None:
        self.phase = phase
        self.point = self.points = None  # a sweep's or the repeats' position comes with their steps
        self._write_all((lifecycle.add_event, {"type": "phase", "message": f"phase {phase}", "data": {"phase": phase}}),
                        (lifecycle.set_progress, {"progress": self._progress_now(force=True)}), report=True)

    def on_event(self, type: str, message: str, data: dict | None = None) -> None:
        self._write(lifecycle.add_event, type=type, message=message, data=data,
                    level=EVENT_LEVELS.get(type, "info"), report=True)
        if type == "sweep_checkpoint" and self.checkpoints is not None:  # a sweep point's checkpoint
            self.checkpoints.push()

    def on_step(self, info) -> None:
        self.point, self.points = getattr(info, "point", None), getattr(info, "points", None)
        if info.run != self.current_run:  # a new run: its epoch count comes with its first epoch
            self.current_run, self.run_epochs = info.run, None
        self._progress(epoch=info.epoch + 1, step=info.step, steps=info.steps, run=info.run)

    def on_epoch_end(self, m) -> None:
        # The trainer reports an epoch before it checkpoints it, so an attempt that died in between
        # reported an epoch that the next attempt trains (and reports) again: the metric row is
        # replaced and the event written once, in one transaction, so the two always agree.
        self.current_run = m.run
        self.run_epochs = m.epochs  # (before the progress row below, which reports it)
        progress = self._progress_now(epoch=m.epoch, step=None, steps=None, force=True)
        with self.writing, self.sessions() as s:
            # a run's own epoch count: the baseline on few labelled rows runs more (shorter) epochs
            self._fenced(self._drain(s, progress=progress))
            self._fenced(lifecycle.add_metric(s, job_id=self.job_id, attempt=self.attempt, run=m.run,
                                              epoch=m.epoch, values=m.to_dict()))
            self._fenced(lifecycle.add_event_once(
                s, job_id=self.job_id, attempt=self.attempt, type="epoch", data=m.to_dict(), key=EPOCH_KEY,
                message=_epoch_line(m)) is not None)
            s.commit()

    def on_checkpoint(self, info) -> None:
        # To the store first (another machine resumes from there), then the event that announces it.
        if self.checkpoints is not None:
            self.checkpoints.push()
        # Written again for an epoch only when a damaged newer checkpoint sent the run back to it. A
        # report: it waits (REPORT_DELAY_SECONDS) to go with the next write, as the phases' events do;
        # the checkpoint it announces is in the store already.
        self._write(lifecycle.add_event_once, type="checkpoint", key=EPOCH_KEY,
                    message=f"{self.current_run}: checkpoint after epoch {info.epoch}",
                    data={"run": self.current_run, "epoch": info.epoch, "sha256": info.sha256, "bytes": info.bytes},
                    report=True)

    def on_repeat_checkpoint(self, info) -> None:
        if self.checkpoints is not None:  # to the store, where a resumed attempt finds it; no event
            self.checkpoints.push()

    def on_teacher_progress(self, done: int, total: int) -> None:
        # progress.step/steps count the training rows the teacher has labelled (caching_teacher)
        self._progress(step=done, steps=total, force=done == total)

    def on_resume(self, *, run: str, epoch: int, skipped) -> None:
        self.current_run = run
        for path, reason in skipped:
            self._write(lifecycle.add_event, type="checkpoint_skipped", level="warning",
                        message=f"{run}: checkpoint {Path(path).name} is damaged ({reason}); using an older one",
                        data={"run": run, "path": Path(path).name, "reason": reason})
        self._write(lifecycle.add_event, type="resumed", message=f"{run}: resumed after epoch {epoch}",
                    data={"run": run, "epoch": epoch})

    def _progress(self, *, epoch=None, step=None, steps=None, run=None, force=False) -> None:
        progress = self._progress_now(epoch=epoch, step=step, steps=steps, force=force)
        if progress is not None:
            self._write(lifecycle.set_progress, progress=progress, report=True)

    def _progress_now(self, *, epoch=None, step=None, steps=None, force=False) -> dict | None:
        """The progress row as of now, or None when the last one is under PROGRESS_INTERVAL_SECONDS old."""
        now = time.monotonic()
        if not force and now - self.last_progress < PROGRESS_INTERVAL_SECONDS:
            return None
        self.last_progress = now
        fraction = self.last_fraction = max(self._fraction(epoch, step, steps), self.last_fraction)
        elapsed = now - self.started
        eta = elapsed * (1 - fraction) / fraction if fraction > 0.02 else None
        progress = {"phase": self.phase, "epoch": epoch, "epochs": self.run_epochs or self.epochs, "step": step,
                    "steps": steps,
                    "fraction": round(fraction, 4), "eta_seconds": None if eta is None else round(eta, 1)}
        return progress

    def _fraction(self, epoch, step, steps) -> float:
        train_share = 1.0 - SETUP_SHARE - FINISH_SHARE
        per_seed = 2 if self.baseline else 1
        runs = per_seed * self.repeats  # every run an equal share: (student, baseline) per seed
        if self.phase == "caching_teacher" and step and steps:  # rows labelled by the teacher so far
            return SETUP_SHARE * (0.5 + 0.5 * step / steps)
        if self.phase in ("loading", "caching_teacher"):
            return 0.0 if self.phase == "loading" else SETUP_SHARE / 2
        if self.phase in ("evaluating", "exporting"):
            return 1.0 - FINISH_SHARE
        if step and steps:
            done = step / steps
        else:  # an epoch boundary
            done = min((epoch or 0) / max(self.run_epochs or self.epochs, 1), 1.0)
        offset = 0 if self.phase == "training" else 1
        if self.phase == "training" and self.points and self.point is not None:
            # a sweep: the student's share is split evenly between its points, in grid order
            done = (self.point + min(done, 1.0)) / self.points
        elif self.phase == "repeats":  # StepInfo.point is the repeat (0 for seed + 1); the baseline after the student
            offset = per_seed * (1 + (self.point or 0)) + (1 if self.current_run.startswith("baseline-seed") else 0)
        return SETUP_SHARE + train_share * (offset + min(done, 1.0)) / runs


def _remove_older_attempts(work: Path) -> None:
    """Scratch directories of this job's earlier attempts on this machine: left behind by a worker
    that was killed, or still written by one that lost its lease (its writes are fenced anyway)."""
    mine = int(work.name.removeprefix("attempt-"))
    for other in work.parent.glob("attempt-*"):
        number = other.name.removeprefix("attempt-")
        if number.isdigit() and int(number) < mine:
            shutil.rmtree(other, ignore_errors=True)


def _epoch_line(m) -> str:
    """An `epoch` event's message. Validation accuracy is None when no validation row is labelled
    (agreement with the teacher is scored instead), agreement None where no teacher logits cover it."""
    if m.val_accuracy is not None:
        score = f"val accuracy {m.val_accuracy:.4f}"
    elif m.val_agreement is not None:
        score = f"val agreement {m.val_agreement:.4f} (no labelled validation row)"
    else:
        score = "not validated (no labelled validation row, no teacher logits for it)"
    return f"{m.run} epoch {m.epoch}/{m.epochs}: loss {m.train_loss:.4f}, {score}"


def _outcome_line(result: DistillResult) -> str:
    """The `result` event's message. Accuracy is None where no evaluation row is labelled (training
    data without labels and no labelled test file): agreement with the teacher is what was measured."""
    line = f"student {_score(result.student)} on {result.evaluated_on}"
    if result.baseline is not None:
        line += f", baseline {_score(result.baseline)}"
        if result.distillation_gain is not None:
            line += f" ({100 * result.distillation_gain:+.1f} points"
            if result.comparison:  # McNemar's exact test on the rows where exactly one of them is right
                line += f"; {result.comparison.verdict}, p = {_p(result.comparison.p_value)}"
            line += ")"
    if result.warnings:
        line += f"; {len(result.warnings)} warning{'s' if len(result.warnings) != 1 else ''}"
    return line


def _p(value: float) -> str:
    """A p-value as the report and the CLI print it, three significant digits: 0.0312, 0.41, 1, 2.3e-07."""
    return f"{value:.3g}"


def _score(run: ModelReport) -> str:
    if run.accuracy is not None:
        return f"accuracy {run.accuracy:.4f}"
    if run.agreement is not None:
        return f"agreement with the teacher {run.agreement:.4f} (no labelled row to score accuracy on)"
    return "not scored (no labelled row)"
