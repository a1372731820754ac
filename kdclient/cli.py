"""`kd`: the distillation service from the command line (also `python -m kdclient`).

    kd files upload teacher.safetensors --purpose teacher
    kd jobs create --teacher-file file_… --teacher-arch mlp --teacher-params '{"hidden_sizes": [256]}' \\
        --student mlp:hidden_sizes=64 --builtin digits -T 4 --alpha 0.3 --epochs 20
    kd jobs watch job_…
    kd jobs download job_… -o student.safetensors
    kd distill --teacher teacher.safetensors --teacher-arch mlp --teacher-params '{"hidden_sizes": [256]}' \\
        --builtin digits --student mlp:hidden_sizes=64 -T 4 --alpha 0.3 -o student.safetensors

The service and key come from --url/--api-key or KD_URL/KD_API_KEY. Exit status: 0 on success, 1 when
a watched job failed or was cancelled, 2 for a usage error or an error from the service (its problem
detail and field errors are printed, never a traceback; KD_DEBUG=1 adds one for unexpected errors),
130 when interrupted.
"""

import copy
import functools
import json
import os
import re
import traceback
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn,
                           TransferSpeedColumn)
from rich.table import Table

from kdclient.client import Client
from kdclient.errors import ApiError, KDClientError
from kdclient.models import File, Job

# --- the `arch:key=value,...` shorthand -------------------------------------------------------------------

LIST_PARAMS = frozenset({"hidden_sizes", "channels"})
"""Architecture parameters that are lists: a single value given for one becomes a one-element list."""


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside [...] or {...}."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _param_value(key: str, text: str) -> Any:
    if re.fullmatch(r"\d+(-\d+)+", text):  # 64-32 -> [64, 32]
        value: Any = [int(x) for x in text.split("-")]
    else:
        try:
            value = json.loads(text)  # 64, 0.1, true, [64, 32], "x"
        except ValueError:
            value = text  # a bare word: a string
    if key in LIST_PARAMS and not isinstance(value, list):
        value = [value]
    return value


def parse_arch(text: str) -> tuple[str, dict[str, Any]]:
    """`mlp:hidden_sizes=64-32,dropout=0.1` -> ("mlp", {"hidden_sizes": [64, 32], "dropout": 0.1}).

    Values are JSON when they parse as JSON (numbers, true/false, [lists]), `a-b-c` integers are a
    list, anything else is a string; `hidden_sizes` and `channels` are always lists (`=64` -> [64])."""
    arch, _, rest = text.partition(":")
    arch = arch.strip()
    if not arch:
        raise ValueError(f"expected ARCH or ARCH:key=value,...; got {text!r}")
    params: dict[str, Any] = {}
    if rest.strip():
        for item in _split_top_level(rest):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise ValueError(f"expected key=value after '{arch}:', got {item.strip()!r}")
            params[key] = _param_value(key, value.strip())
    return arch, params


# --- building a job spec from flags -----------------------------------------------------------------------

HYPER_FLAGS = {  # CLI parameter name -> hyperparameters field
    "temperature": "temperature", "alpha": "alpha", "loss": "loss", "epochs": "epochs",
    "batch_size": "batch_size", "lr": "learning_rate", "weight_decay": "weight_decay",
    "optimizer": "optimizer", "momentum": "momentum", "schedule": "schedule", "step_size": "step_size",
    "gamma": "gamma", "grad_clip_norm": "grad_clip_norm", "seed": "seed", "repeats": "repeats", "augment": "augment",
    "noise_std": "noise_std", "device": "device", "shift_max": "shift_max", "mixup_alpha": "mixup_alpha",
    "early_stopping_patience": "early_stopping_patience", "restore_best": "restore_best",
}
SWEEP_FLAGS = {"temperature": "--temperature", "alpha": "--alpha"}
"""Flags that take one number or several (repeated, or comma-separated: `-T 2,4,8`) to sweep."""


def _sweep_value(values: list[str] | None, flag: str) -> float | list[float] | None:
    """`-T 4` -> 4.0; `-T 2,4 -T 8` -> [2.0, 4.0, 8.0] (a sweep over every value given)."""
    if not values:
        return None
    numbers = []
    for item in (part.strip() for value in values for part in value.split(",")):
        try:
            numbers.append(float(item))
        except ValueError:
            raise typer.BadParameter(f"{item!r} is not a number (give one, or several separated by commas to "
                                     "sweep them)", param_hint=flag) from None
    return numbers[0] if len(numbers) == 1 else numbers


def hyperparameters_from(options: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters section from a command's options (its locals), sweep lists parsed."""
    hyper = {HYPER_FLAGS[k]: v for k, v in options.items() if k in HYPER_FLAGS}
    for name, flag in SWEEP_FLAGS.items():
        hyper[name] = _sweep_value(hyper.get(name), flag)
    return hyper


def _augment_value(value: str | None) -> str | list[str] | None:
    """--augment: "none", one name, or a comma-separated list (e.g. shift,mixup)."""
    if value is None or "," not in value:
        return value
    return [v.strip() for v in value.split(",") if v.strip()]


def _json_option(value: str | None, flag: str, *, obj: bool = True) -> Any:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as e:
        raise typer.BadParameter(f"not valid JSON ({e})", param_hint=flag) from None
    if obj and not isinstance(parsed, dict):
        raise typer.BadParameter("must be a JSON object, e.g. '{\"hidden_sizes\": [64]}'", param_hint=flag)
    return parsed


def load_spec_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        spec = json.loads(path.read_text())
    except OSError as e:
        raise typer.BadParameter(f"cannot read {path}: {e.strerror or e}", param_hint="--spec") from None
    except ValueError as e:
        raise typer.BadParameter(f"{path} is not valid JSON ({e})", param_hint="--spec") from None
    if not isinstance(spec, dict):
        raise typer.BadParameter(f"{path} must hold a JSON object (a job spec)", param_hint="--spec")
    return spec


# kdcore's local file fields (a spec for `python -m kdcore run`, like examples/*.json) and the
# service's id field each becomes once the CLI has uploaded the file, with the upload's purpose.
# The same table as jobs/spec_files.py FILE_FIELDS (tests/client/test_cli.py keeps them equal);
# the client does not import the service's packages.
LOCAL_FILE_FIELDS = (
    ("teacher.path", "teacher.file_id", "teacher"),
    ("student.init_path", "student.init_file_id", "student_init"),
    ("dataset.train_path", "dataset.train_file_id", "dataset"),
    ("dataset.validation_path", "dataset.validation_file_id", "dataset"),
    ("dataset.test_path", "dataset.test_file_id", "dataset"),
    ("dataset.unlabeled_paths", "dataset.unlabeled_file_ids", "dataset"),
)


def local_files_of(spec: dict[str, Any], spec_dir: Path) -> list[tuple[str, str, str, Path]]:
    """(kdcore field, service field, purpose, path) of each local file a spec names; a relative
    path is looked up from the current directory, then from the spec file's. A path that is not a
    file is a usage error naming the field."""
    found = []
    for kd_field, api_field, purpose in LOCAL_FILE_FIELDS:
        section, name = kd_field.split(".")
        sect = spec.get(section)
        if not isinstance(sect, dict) or sect.get(name) is None:
            continue
        if sect.get(api_field.split(".")[1]) is not None:  # a flag named an uploaded file: it wins
            sect.pop(name)
            continue
        value = sect[name]
        for i, raw in enumerate(value if isinstance(value, list) else [value]):
            where = f"{kd_field}[{i}]" if isinstance(value, list) else kd_field
            path = Path(str(raw)).expanduser()
            if not path.is_absolute() and not path.is_file():
                path = spec_dir / path
            if not path.is_file():
                raise typer.BadParameter(f"{where}: {raw!r} is not a file (looked in the current directory and "
                                         f"next to the spec)", param_hint="--spec")
            found.append((kd_field, api_field, purpose, path))
    return found


def upload_local_files(client: Client, spec: dict[str, Any], files: list[tuple[str, str, str, Path]],
                       err: Console) -> dict[str, Any]:
    """A copy of `spec` with each local file uploaded and named by its id instead (files named
    twice are uploaded once)."""
    spec = copy.deepcopy(spec)
    ids: dict[tuple[Path, str], str] = {}
    for kd_field, api_field, purpose, path in files:
        key = (path.resolve(), purpose)
        if key not in ids:
            f = client.upload_file(path, purpose)
            ids[key] = f.id
            err.print(f"uploaded {path} -> {_describe_file(f)}", markup=False)
        section, name = kd_field.split(".")
        api_name = api_field.split(".")[1]
        sect = spec[section]
        if api_name.endswith("_ids"):
            sect.setdefault(api_name, []).append(ids[key])
        else:
            sect[api_name] = ids[key]
    for kd_field, _, _, _ in files:
        section, name = kd_field.split(".")
        spec[section].pop(name, None)
    return spec


def build_spec(base: dict[str, Any] | None = None, *, teacher_file: str | None = None,
               teacher_arch: str | None = None, teacher_params: dict | None = None, student: str | None = None,
               student_arch: str | None = None, student_params: dict | None = None,
               student_init_file: str | None = None, builtin: str | None = None, train_file: str | None = None,
               validation_file: str | None = None, test_file: str | None = None,
               validation_fraction: float | None = None, standardize: bool | None = None,
               hyperparameters: dict[str, Any] | None = None, baseline: bool | None = None,
               metadata: dict | None = None, resources: dict[str, Any] | None = None,
               unlabeled_files: list[str] | None = None, labels_per_class: int | None = None) -> dict[str, Any]:
    """The body of POST /v1/jobs: `base` (a spec file) with every given flag on top of it."""
    spec = copy.deepcopy(base or {})

    def section(name: str) -> dict[str, Any]:
        value = spec.setdefault(name, {})
        if not isinstance(value, dict):
            raise typer.BadParameter(f"'{name}' in the spec file must be an object", param_hint="--spec")
        return value

    teacher = section("teacher")
    for key, value in (("file_id", teacher_file), ("arch", teacher_arch), ("arch_params", teacher_params)):
        if value is not None:
            teacher[key] = value
    st = section("student")
    if student is not None:
        try:
            st["arch"], st["arch_params"] = parse_arch(student)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--student") from None
    if student_arch is not None:
        st["arch"] = student_arch
    if student_params is not None:
        st["arch_params"] = {**(st.get("arch_params") or {}), **student_params}
    if student_init_file is not None:
        st["init_file_id"] = student_init_file
    data = section("dataset")
    if builtin is not None:
        data["builtin"] = builtin
        data.pop("train_file_id", None)
    if train_file is not None:
        data["train_file_id"] = train_file
        data.pop("builtin", None)
    for key, value in (("validation_file_id", validation_file), ("test_file_id", test_file),
                       ("validation_fraction", validation_fraction), ("standardize", standardize),
                       ("labels_per_class", labels_per_class)):
        if value is not None:
            data[key] = value
    if unlabeled_files:
        data["unlabeled_file_ids"] = [*(data.get("unlabeled_file_ids") or []), *unlabeled_files]
    hp = section("hyperparameters")
    hp.update({k: v for k, v in (hyperparameters or {}).items() if v is not None})
    if "augment" in hp:
        hp["augment"] = _augment_value(hp["augment"]) if isinstance(hp["augment"], str) else hp["augment"]
    if baseline is not None:
        spec["baseline"] = baseline
    res = section("resources")
    res.update({k: v for k, v in (resources or {}).items() if v is not None})
    if metadata:
        spec["metadata"] = {**(spec.get("metadata") or {}), **metadata}
    return {k: v for k, v in spec.items() if v != {}}


# --- state, errors, output --------------------------------------------------------------------------------

make_client: Callable[[str | None, str | None], Client] = lambda url, key: Client(url, key)  # noqa: E731
"""How commands get a Client (tests replace it to talk to an in-process API)."""


def _stdout_console() -> Console:
    console = Console(soft_wrap=True, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # piped or captured: tables need not fit an 80-column default
    return console


@dataclass
class State:
    url: str | None = None
    api_key: str | None = None
    out: Console = field(default_factory=_stdout_console)
    err: Console = field(default_factory=lambda: Console(stderr=True, soft_wrap=True, highlight=False))
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = make_client(self.url, self.api_key)
            # say what a retry waits for (a quota's 429, an outage), instead of a silent pause
            self._client.on_retry = lambda message: self.err.print(message, markup=False)
        return self._client


def _state(ctx: typer.Context) -> State:
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State()
    return root.obj


def _print_error(err: Console, e: Exception) -> None:
    if isinstance(e, ApiError):
        err.print(f"error: {e.status} {e.title}: {e.detail}", markup=False)
        for fe in e.errors:
            line = f"{fe.field}: {fe.reason}" if fe.field else fe.reason
            if line not in e.detail:
                err.print(f"  {line}", markup=False)
        if e.status == 401:
            err.print("  (set KD_API_KEY or pass --api-key)", markup=False)
    else:
        err.print(f"error: {e}", markup=False)


def handle_errors(fn):
    """Errors from the client, the file system or Ctrl-C become one line and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        err = Console(stderr=True, soft_wrap=True, highlight=False)
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except KDClientError as e:
            _print_error(err, e)
            raise typer.Exit(2) from None
        except OSError as e:
            name = f" {e.filename}" if getattr(e, "filename", None) else ""
            err.print(f"error:{name}: {e.strerror or e}", markup=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("\ninterrupted", markup=False)
            raise typer.Exit(130) from None
        except Exception as e:  # a bug in the client: still no traceback unless asked for
            if os.environ.get("KD_DEBUG"):
                traceback.print_exc()
            err.print(f"error: unexpected {type(e).__name__}: {e} (KD_DEBUG=1 shows the traceback)", markup=False)
            raise typer.Exit(2) from None

    return wrapper


def _fmt(value: Any, spec: str = "", suffix: str = "") -> str:
    if value is None:
        return "-"
    try:
        return format(value, spec) + suffix
    except (TypeError, ValueError):
        return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _when(value) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z") if value is not None else "-"


def _json_dump(out: Console, value: Any) -> None:
    out.print(json.dumps(value, indent=2, default=str), markup=False, highlight=False)


def _show(state: State, json_out: bool, raw: Any, for_people: Callable[[], None]) -> None:
    """--json prints the API's JSON as it came; otherwise `for_people` prints the table or summary."""
    if json_out:
        _json_dump(state.out, raw)
    else:
        for_people()


def result_table(result: dict[str, Any]) -> Table:
    teacher, student, baseline = (result.get(k) or {} for k in ("teacher", "student", "baseline"))
    table = Table(title=f"evaluated on {result.get('evaluated_on', '?')} ({result.get('num_eval_samples', '?')} "
                        "samples)", title_justify="left")
    table.add_column("model")
    for name in ("accuracy", "agreement", "parameters", "latency", "trained on (labelled + unlabelled)"):
        table.add_column(name, justify="right")

    def rows(run: dict[str, Any]) -> str:
        counts = run.get("train_rows") or {}
        parts = []
        if counts:
            parts.append(f"{_fmt(counts.get('labeled'), ',')} + {_fmt(counts.get('unlabeled'), ',')}")
        if run.get("steps") is not None:
            parts.append(f"{_fmt(run['steps'], ',')} steps")
        return ", ".join(parts) or "-"

    table.add_row("teacher", _fmt(teacher.get("accuracy"), ".2%"), "-", _fmt(teacher.get("parameters"), ","),
                  _fmt(teacher.get("latency_ms"), ".3f", " ms"), "-")
    table.add_row("student (distilled)", _fmt(student.get("accuracy"), ".2%"), _fmt(student.get("agreement"), ".2%"),
                  _fmt(student.get("parameters"), ","), _fmt(student.get("latency_ms"), ".3f", " ms"), rows(student))
    if result.get("baseline") is not None:
        table.add_row("baseline (no teacher)", _fmt(baseline.get("accuracy"), ".2%"),
                      _fmt(baseline.get("agreement"), ".2%"), _fmt(student.get("parameters"), ","), "-",
                      rows(baseline))
    gain = result.get("distillation_gain")
    table.caption = (f"compression {_fmt(result.get('compression'), '.1f', 'x')}, "
                     f"speedup {_fmt(result.get('speedup'), '.1f', 'x')}, distillation gain "
                     f"{_fmt(None if gain is None else 100 * gain, '+.1f', ' points')}")
    if student.get("accuracy") is None and student.get("agreement") is not None:
        table.caption += (f"; the {result.get('evaluated_on') or 'evaluation'} split has no labels: agreement "
                          "with the teacher is the score")
    comparison = result.get("comparison")
    if isinstance(comparison, dict) and comparison.get("verdict"):  # absent from results stored before it
        table.caption += (f"\nstudent vs baseline: {comparison['verdict']} (p = {_fmt(comparison.get('p_value'), '.3g')}; "
                          f"McNemar's exact test at alpha {_fmt(comparison.get('alpha'), 'g')}: "
                          f"{_fmt(comparison.get('student_only_right'))} rows only the student got right, "
                          f"{_fmt(comparison.get('baseline_only_right'))} only the baseline)")
    sweep = result.get("sweep")
    if isinstance(sweep, dict) and isinstance(sweep.get("best"), dict):
        best = sweep["best"]
        table.caption += (f"\nsweep: {len(sweep.get('points') or [])} (T, alpha) points; the student is "
                          f"T {_fmt(best.get('temperature'), 'g')}, alpha {_fmt(best.get('alpha'), 'g')}, the best "
                          "on validation")
    repeats = result.get("repeats")
    if isinstance(repeats, dict) and len(repeats.get("seeds") or []) > 1:
        table.caption += "\n" + _seeds_caption(repeats)
    for warning in result.get("warnings") or []:
        if isinstance(warning, dict) and warning.get("message"):
            table.caption += f"\nwarning: {warning['message']}"
    table.caption_justify = "left"
    return table


def _seeds_caption(repeats: dict[str, Any]) -> str:
    """result.repeats: `seeds 0, 1, 2 (accuracy): student 95.10 ± 0.40 %, ... (mean ± std)`."""
    def spread(part: Any, unit: str, fmt: str = ".2f") -> str:
        mean, std = (part or {}).get("mean"), (part or {}).get("std")
        return "-" if mean is None or std is None else f"{100 * mean:{fmt}} ± {100 * std:.2f}{unit}"

    parts = [f"student {spread(repeats.get('student'), ' %')}"]
    if repeats.get("baseline"):
        parts.append(f"baseline {spread(repeats.get('baseline'), ' %')}")
    if repeats.get("gain"):
        parts.append(f"gain {spread(repeats.get('gain'), ' points', '+.2f')}")
    return (f"seeds {', '.join(str(s) for s in repeats['seeds'])} ({repeats.get('metric') or 'accuracy'}): "
            + ", ".join(parts) + f" (mean ± std; the student above is seed {repeats['seeds'][0]})")


def _file_table(files: list[File]) -> Table:
    table = Table()
    for name, justify in (("id", "left"), ("purpose", "left"), ("format", "left"), ("kind", "left"),
                          ("filename", "left"), ("rows (labelled)", "right"), ("bytes", "right"), ("created", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "filename", overflow="fold")
    for f in files:
        table.add_row(f.id, f.purpose, f.format, f.kind or "-", f.filename, _rows(f), f"{f.bytes:,}",
                      f.created_at.strftime("%Y-%m-%d %H:%M") if f.created_at else "-")
    return table


def _rows(f: File) -> str:
    """A dataset's rows and, when the service says, how many of them carry a label: `1,000 (100)`."""
    if f.num_samples is None:
        return "-"
    return f"{f.num_samples:,}" + (f" ({f.num_labeled:,})" if f.num_labeled is not None else "")


def _describe_file(f: File) -> str:
    extra = [f"{f.kind}" if f.kind else None,
             f"{f.num_samples} samples" if f.num_samples is not None else None,
             f"{f.num_labeled} labelled" if f.num_labeled is not None else None,
             f"input {f.input_shape}" if f.input_shape else None,
             f"{f.num_classes} classes" if f.num_classes is not None else None,
             f"{f.parameters:,} parameters" if f.parameters is not None else None]
    return f"{f.id}  {f.purpose}  {f.format}  {f.filename}  {f.bytes:,} bytes  " + ", ".join(e for e in extra if e)


def _arch(section: dict[str, Any]) -> str:
    params = section.get("arch_params")
    arch = section.get("arch") or "-"
    return f"{arch} {json.dumps(params)}" if params else arch


def _progress_line(job: Job, epoch: dict[str, Any] | None = None, *, phase: bool = True) -> str:
    """`training · epoch 3/10 · loss 0.4123 · acc 93.1% · ETA 12s` (the latest epoch's train loss and
    validation accuracy; `baseline epoch` while the from-scratch baseline trains). Once the job has
    ended, `epoch` is the student's last epoch and its own numbers are shown."""
    p = job.progress
    parts = [p.phase or "-"] if phase else []
    if job.done and epoch and epoch.get("epoch") is not None and epoch.get("epochs"):
        parts.append(f"epoch {epoch['epoch']}/{epoch['epochs']}")
    elif p.epoch is not None and p.epochs:
        run = "baseline " if epoch and epoch.get("run") == "baseline" else ""
        parts.append(f"{run}epoch {p.epoch}/{p.epochs}")
    if epoch:
        parts.append(f"loss {_fmt(epoch.get('train_loss'), '.4f')}")
        parts.append(f"acc {_fmt(epoch.get('val_accuracy'), '.1%')}")
    if p.eta_seconds is not None and not job.done:
        parts.append(f"ETA {_duration(p.eta_seconds)}")
    return " · ".join(parts)


def _job_summary(out: Console, job: Job) -> None:
    spec = job.spec
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    hp = spec.get("hyperparameters") or {}
    data = spec.get("dataset") or {}
    teacher = spec.get("teacher") or {}
    rows = [
        ("job", job.id),
        ("status", job.status + (f"  {100 * job.progress.fraction:.0f}% · {_progress_line(job)}"
                                 if job.status in ("running", "cancelling") else "")),
        ("attempt", f"{job.attempt} of {job.max_attempts}"),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        ("teacher", f"{teacher.get('file_id', '-')}  {_arch(teacher)}"),
        ("student", _arch(spec.get("student") or {})),
        ("dataset", data.get("builtin") or " / ".join(str(data.get(k)) for k in
                                                    ("train_file_id", "validation_file_id", "test_file_id")
                                                    if data.get(k))),
    ]
    if data.get("unlabeled_file_ids"):
        rows.append(("unlabelled", ", ".join(map(str, data["unlabeled_file_ids"]))))
    if data.get("labels_per_class") is not None:
        rows.append(("labels", f"{data['labels_per_class']} per class (the other training rows unlabelled)"))
    rows += [
        ("distillation", f"T {hp.get('temperature')}, alpha {hp.get('alpha')}, loss {hp.get('loss')}"),
        ("training", f"{hp.get('epochs')} epochs, batch {hp.get('batch_size')}, lr {hp.get('learning_rate')}, "
                     f"{hp.get('optimizer')}, seed {hp.get('seed')}, baseline {spec.get('baseline')}"),
    ]
    augment = _augment_text(hp)
    if augment:
        rows.append(("augment", augment))
    if job.status == "queued" and job.queue:
        where = f", {job.queue_position} older job(s) ahead" if job.queue_position is not None else ""
        rows.append(("queue", f"{job.queue}{where}"))
    if job.status == "queued" and job.waiting_reason:
        rows.append(("waiting", job.waiting_reason))
    if job.error:
        rows.append(("error", f"{job.error.code}: {job.error.message}"))
    for key, value in rows:
        grid.add_row(key, value)
    out.print(grid, markup=False)
    if job.result:
        out.print()
        out.print(result_table(job.result))


def _augment_text(hp: dict[str, Any]) -> str | None:
    """`shift (max 4), mixup (alpha 0.4)`, or None when the spec augments nothing."""
    augment = hp.get("augment")
    names = [augment] if isinstance(augment, str) else list(augment or [])
    names = [n for n in names if n and n != "none"]
    if not names:
        return None
    detail = {"shift": f" (max {hp['shift_max']})" if hp.get("shift_max") is not None else "",
              "crop_flip": f" (padding {hp['shift_max']})" if hp.get("shift_max") is not None else "",
              "mixup": f" (alpha {hp['mixup_alpha']})" if hp.get("mixup_alpha") is not None else "",
              "noise": f" (std {hp['noise_std']})" if hp.get("noise_std") is not None else ""}
    return ", ".join(f"{n}{detail.get(n, '')}" for n in names)


def _job_table(jobs: list[Job]) -> Table:
    table = Table()
    for name, justify in (("id", "left"), ("status", "left"), ("progress", "right"), ("student", "left"),
                          ("accuracy", "right"), ("created", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "student", overflow="fold")
    for j in jobs:
        st = (j.result or {}).get("student") or {}
        acc = _fmt(st.get("accuracy"), ".2%")
        if st.get("accuracy") is None and st.get("agreement") is not None:  # nothing labelled to score on
            acc = f"agreement {_fmt(st['agreement'], '.2%')}"
        table.add_row(j.id, j.status, f"{100 * j.progress.fraction:.0f}%", _arch(j.spec.get("student") or {}),
                      acc, j.created_at.strftime("%Y-%m-%d %H:%M") if j.created_at else "-")
    return table


def watch_job(state: State, job_id: str, *, poll: float = 1.0) -> Job:
    """Follow a job to its end: a live progress bar on stderr (a terminal) and each new event as a line."""
    client, err = state.client, state.err
    # the latest epoch event (the run training now) and the student's: once the job has ended, the line
    # under its status shows the student, the model it delivers, not the baseline that trained last
    seen: dict[str, Any] = {"event": 0, "latest": None, "student": None, "waiting": None}
    columns = [SpinnerColumn(), TextColumn("{task.description:<15}"), BarColumn(bar_width=16), TaskProgressColumn(),
               TextColumn("{task.fields[info]}")]
    try:
        with Progress(*columns, console=err, disable=not err.is_terminal) as bar:
            task = bar.add_task(job_id, total=1.0, info="")

            def update(job: Job) -> None:
                for event in client.events(job_id, after=seen["event"]):
                    seen["event"] = event.id
                    if event.type == "epoch" and event.data:
                        seen["latest"] = event.data
                        if event.data.get("run", "student") == "student":
                            seen["student"] = event.data
                    stamp = event.created_at.astimezone().strftime("%H:%M:%S") if event.created_at else ""
                    level = "" if event.level == "info" else f"{event.level.upper()}: "
                    bar.console.print(f"{stamp} {level}{event.message}", markup=False)
                reason = job.waiting_reason if job.status == "queued" else None
                if reason and reason != seen["waiting"]:
                    bar.console.print(f"waiting: {reason}", markup=False)
                seen["waiting"] = reason
                running = job.status == "running" and job.progress.phase
                bar.update(task, completed=job.progress.fraction,
                           description=job.progress.phase if running else job.status,
                           info=_progress_line(job, seen["student"] if job.done else seen["latest"], phase=False))

            job = client.wait(job_id, poll=poll, on_update=update)
        if not err.is_terminal:  # no bar to show the final status under: one line instead
            err.print(f"{job.id} {job.status} · {_progress_line(job, seen['student'], phase=False)}", markup=False)
        return job
    except KeyboardInterrupt:
        err.print(f"\nstopped watching; {job_id} keeps running (kd jobs cancel {job_id} stops it)", markup=False)
        raise typer.Exit(130) from None


def _finish(state: State, job: Job) -> None:
    """Exit 1 with the error when the job did not succeed."""
    if job.succeeded:
        return
    if job.status == "failed":
        error = job.error
        state.err.print(f"job {job.id} failed: {error.code}: {error.message}" if error else f"job {job.id} failed",
                        markup=False)
    else:
        state.err.print(f"job {job.id} {job.status}", markup=False)
    raise typer.Exit(1)


def _student_format(output: Path | None, fmt: Optional["StudentFormat"]) -> str:
    if fmt is not None:
        return fmt.value
    return "onnx" if output is not None and output.suffix.lower() == ".onnx" else "safetensors"


def _download(state: State, action: Callable[..., Path], *args, output: Path) -> Path:
    columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()]
    with Progress(*columns, console=state.err, disable=not state.err.is_terminal, transient=True) as bar:
        task = bar.add_task(f"downloading {output.name}", total=None)

        def progress(received: int, total: int | None) -> None:
            bar.update(task, completed=received, total=total)

        return action(*args, output, on_progress=progress)


# --- the app ------------------------------------------------------------------------------------------

app = typer.Typer(name="kd", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Distillation as a service: upload a teacher and data, get back a measured student.")
files_app = typer.Typer(no_args_is_help=True, help="Upload, list, inspect, download and delete files.")
jobs_app = typer.Typer(no_args_is_help=True, help="Submit, follow, cancel jobs and download their student.")
app.add_typer(files_app, name="files")
app.add_typer(jobs_app, name="jobs")


class Purpose(str, Enum):
    teacher = "teacher"
    dataset = "dataset"
    teacher_logits = "teacher_logits"
    student_init = "student_init"


class StudentFormat(str, Enum):
    safetensors = "safetensors"
    onnx = "onnx"


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelling = "cancelling"
    cancelled = "cancelled"


@app.callback()
def root(ctx: typer.Context,
         url: Annotated[Optional[str], typer.Option("--url", envvar="KD_URL", show_envvar=True,
                                                    help="the service (default http://127.0.0.1:8000)")] = None,
         api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="KD_API_KEY", show_envvar=True,
                                                        help="an API key")] = None) -> None:
    state = _state(ctx)
    state.url, state.api_key = url, api_key


JsonFlag = Annotated[bool, typer.Option("--json", help="print the raw JSON")]

# job spec options, shared by `kd jobs create` and `kd distill`
_T, _S, _D, _H, _R = "Teacher", "Student", "Data", "Hyperparameters", "Resources"
TeacherArch = Annotated[Optional[str], typer.Option("--teacher-arch", help="registry architecture of a "
                        "safetensors teacher, e.g. mlp", rich_help_panel=_T)]
TeacherParams = Annotated[Optional[str], typer.Option("--teacher-params", metavar="JSON",
                          help='its parameters, e.g. \'{"hidden_sizes": [256]}\'', rich_help_panel=_T)]
StudentShort = Annotated[Optional[str], typer.Option("--student", metavar="ARCH[:K=V,...]", help=(
    "student architecture and parameters, e.g. mlp:hidden_sizes=64-32,dropout=0.1 (a-b-c is a list; "
    "hidden_sizes and channels are always lists; other values are JSON, else strings)"), rich_help_panel=_S)]
StudentArch = Annotated[Optional[str], typer.Option("--student-arch", help="student architecture (overrides "
                        "--student's)", rich_help_panel=_S)]
StudentParams = Annotated[Optional[str], typer.Option("--student-params", metavar="JSON", help="student "
                          "parameters as JSON, merged over --student's", rich_help_panel=_S)]
Builtin = Annotated[Optional[str], typer.Option("--builtin", help="a builtin dataset: digits or mnist1d",
                    rich_help_panel=_D)]
ValidationFraction = Annotated[Optional[float], typer.Option("--validation-fraction", help="share of train held "
                               "out for validation when there is no validation file", rich_help_panel=_D)]
Standardize = Annotated[Optional[bool], typer.Option("--standardize/--no-standardize", help="standardise "
                        "features with the training split's mean and std", show_default=False, rich_help_panel=_D)]
Temperature = Annotated[Optional[list[str]], typer.Option("--temperature", "-T", metavar="T[,T...]", help=(
    "softmax temperature T; several (-T 2,4,8 or repeated) sweep them: every (T, alpha) point is trained and "
    "the best on validation becomes the student"), rich_help_panel=_H)]
Alpha = Annotated[Optional[list[str]], typer.Option("--alpha", metavar="A[,A...]", help="weight of the hard-label "
                  "loss (0..1); several (--alpha 0.1,0.5 or repeated) sweep them", rich_help_panel=_H)]
EarlyStopping = Annotated[Optional[int], typer.Option("--early-stopping-patience", min=1, metavar="EPOCHS",
                          help="stop a run after this many epochs without a better validation accuracy "
                               "(default: off)", rich_help_panel=_H)]
RestoreBest = Annotated[Optional[bool], typer.Option("--restore-best/--no-restore-best", show_default=False,
                        help="end each run with the weights of its best validation epoch (default: no)",
                        rich_help_panel=_H)]
Loss = Annotated[Optional[str], typer.Option("--loss", help="forward_kl, reverse_kl, js or mse_logits",
                 rich_help_panel=_H)]
Epochs = Annotated[Optional[int], typer.Option("--epochs", help="training epochs", rich_help_panel=_H)]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", rich_help_panel=_H)]
Lr = Annotated[Optional[float], typer.Option("--lr", "--learning-rate", help="learning rate", rich_help_panel=_H)]
WeightDecay = Annotated[Optional[float], typer.Option("--weight-decay", rich_help_panel=_H)]
Optimizer = Annotated[Optional[str], typer.Option("--optimizer", help="adamw or sgd", rich_help_panel=_H)]
Momentum = Annotated[Optional[float], typer.Option("--momentum", rich_help_panel=_H)]
Schedule = Annotated[Optional[str], typer.Option("--schedule", help="cosine, step or constant", rich_help_panel=_H)]
StepSize = Annotated[Optional[int], typer.Option("--step-size", rich_help_panel=_H)]
Gamma = Annotated[Optional[float], typer.Option("--gamma", rich_help_panel=_H)]
GradClip = Annotated[Optional[float], typer.Option("--grad-clip-norm", rich_help_panel=_H)]
Seed = Annotated[Optional[int], typer.Option("--seed", rich_help_panel=_H)]
Repeats = Annotated[Optional[int], typer.Option("--repeats", min=1, metavar="N", help=(
    "train the student (and the baseline) with N seeds (--seed, --seed + 1, ...) and report mean ± std; "
    "the delivered student is the first seed's (default 1)"), rich_help_panel=_H)]
Augment = Annotated[Optional[str], typer.Option("--augment", help="none, or a comma-separated list of noise, shift, "
                    "crop_flip, mixup (the teacher labels each augmented view)", rich_help_panel=_H)]
ShiftMax = Annotated[Optional[int], typer.Option("--shift-max", help="shift / crop padding (default 4)",
                                                 rich_help_panel=_H)]
MixupAlpha = Annotated[Optional[float], typer.Option("--mixup-alpha", help="mixup Beta parameter (default 0.4)",
                                                     rich_help_panel=_H)]
LabelsPerClass = Annotated[Optional[int], typer.Option("--labels-per-class", help="keep N labels per class of the "
                           "training split, the other rows become unlabelled inputs", rich_help_panel=_D)]
NoiseStd = Annotated[Optional[float], typer.Option("--noise-std", rich_help_panel=_H)]
Device = Annotated[Optional[str], typer.Option("--device", help="auto, cpu or cuda", rich_help_panel=_H)]
Baseline = Annotated[Optional[bool], typer.Option("--baseline/--no-baseline", help="also train the student "
                     "from scratch for comparison (default: yes)", show_default=False, rich_help_panel=_H)]
Metadata = Annotated[Optional[str], typer.Option("--metadata", metavar="JSON", help="a JSON object kept with "
                     "the job")]
ResDevice = Annotated[Optional[str], typer.Option("--resources-device", help="cpu or cuda: which workers may "
                     "run the job (its queue)", rich_help_panel=_R)]
Gpus = Annotated[Optional[int], typer.Option("--gpus", help="GPUs on one machine (cuda jobs; > 1 runs "
                "data-parallel)", rich_help_panel=_R)]
Processes = Annotated[Optional[int], typer.Option("--processes", help="data-parallel processes (cpu jobs: > 1 "
                     "runs gloo DDP)", rich_help_panel=_R)]
Poll = Annotated[float, typer.Option("--poll", help="seconds between polls", min=0.1)]


# --- files ------------------------------------------------------------------------------------------------

@files_app.command("upload")
@handle_errors
def files_upload(ctx: typer.Context,
                 path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
                 purpose: Annotated[Purpose, typer.Option("--purpose", "-p", help="what the file is")],
                 json_out: JsonFlag = False,
                 quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the id")] = False) -> None:
    """Upload a teacher, a dataset, teacher logits or a student's initial weights."""
    state = _state(ctx)
    f = state.client.upload_file(path, purpose.value)
    if json_out:
        _json_dump(state.out, f.raw)
    elif quiet:
        state.out.print(f.id, markup=False)
    else:
        state.out.print(_describe_file(f), markup=False)


@files_app.command("list")
@handle_errors
def files_list(ctx: typer.Context,
               purpose: Annotated[Optional[Purpose], typer.Option("--purpose", "-p")] = None,
               limit: Annotated[int, typer.Option("--limit", min=1, max=100)] = 20,
               all_: Annotated[bool, typer.Option("--all", help="every page")] = False,
               json_out: JsonFlag = False) -> None:
    """List files, newest first."""
    state = _state(ctx)
    value = purpose.value if purpose else None
    files = (list(state.client.iter_files(purpose=value)) if all_
             else state.client.list_files(purpose=value, limit=limit).data)
    _show(state, json_out, [f.raw for f in files], lambda: state.out.print(_file_table(files)))


@files_app.command("get")
@handle_errors
def files_get(ctx: typer.Context, file_id: str, json_out: JsonFlag = False) -> None:
    """Describe one file."""
    state = _state(ctx)
    f = state.client.get_file(file_id)
    _show(state, json_out, f.raw, lambda: state.out.print(_describe_file(f), markup=False))


@files_app.command("download")
@handle_errors
def files_download(ctx: typer.Context, file_id: str,
                   output: Annotated[Path, typer.Option("--output", "-o", help="where to write it")]) -> None:
    """Download a file's content (resumes a partial download; sha256 checked)."""
    state = _state(ctx)
    path = _download(state, state.client.download_file, file_id, output=output)
    state.out.print(f"{path} ({path.stat().st_size:,} bytes, sha256 verified)", markup=False)


@files_app.command("delete")
@handle_errors
def files_delete(ctx: typer.Context, file_id: str) -> None:
    """Delete a file (refused while an unfinished job uses it)."""
    state = _state(ctx)
    state.client.delete_file(file_id)
    state.out.print(f"deleted {file_id}", markup=False)


# --- jobs -------------------------------------------------------------------------------------------------

@jobs_app.command("create")
@handle_errors
def jobs_create(
        ctx: typer.Context,
        spec_file: Annotated[Optional[Path], typer.Option("--spec", help="a JSON job spec; flags override it")] = None,
        teacher_file: Annotated[Optional[str], typer.Option("--teacher-file", help="id of an uploaded teacher or "
                                                            "teacher_logits file", rich_help_panel=_T)] = None,
        teacher_arch: TeacherArch = None, teacher_params: TeacherParams = None,
        student: StudentShort = None, student_arch: StudentArch = None, student_params: StudentParams = None,
        student_init_file: Annotated[Optional[str], typer.Option("--student-init-file", help="id of a student_init "
                                                                 "file", rich_help_panel=_S)] = None,
        builtin: Builtin = None,
        train_file: Annotated[Optional[str], typer.Option("--train-file", help="id of a dataset file",
                                                          rich_help_panel=_D)] = None,
        validation_file: Annotated[Optional[str], typer.Option("--validation-file", rich_help_panel=_D)] = None,
        test_file: Annotated[Optional[str], typer.Option("--test-file", rich_help_panel=_D)] = None,
        unlabeled_file: Annotated[Optional[list[str]], typer.Option("--unlabeled-file", help="id of a dataset file "
                                  "of unlabelled inputs (repeatable)", rich_help_panel=_D)] = None,
        labels_per_class: LabelsPerClass = None,
        validation_fraction: ValidationFraction = None, standardize: Standardize = None,
        temperature: Temperature = None, alpha: Alpha = None, loss: Loss = None, epochs: Epochs = None,
        batch_size: BatchSize = None, lr: Lr = None, weight_decay: WeightDecay = None, optimizer: Optimizer = None,
        momentum: Momentum = None, schedule: Schedule = None, step_size: StepSize = None, gamma: Gamma = None,
        grad_clip_norm: GradClip = None, seed: Seed = None, repeats: Repeats = None, augment: Augment = None, noise_std: NoiseStd = None,
        shift_max: ShiftMax = None, mixup_alpha: MixupAlpha = None,
        early_stopping_patience: EarlyStopping = None, restore_best: RestoreBest = None,
        device: Device = None, baseline: Baseline = None, metadata: Metadata = None,
        resources_device: ResDevice = None, gpus: Gpus = None, processes: Processes = None,
        watch: Annotated[bool, typer.Option("--watch", "-w", help="follow the job until it ends")] = False,
        poll: Poll = 1.0,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="print the spec instead of submitting it")] = False,
        json_out: JsonFlag = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the id")] = False) -> None:
    """Submit a job from flags and/or a spec file (flags override the file). Local files a spec
    names (`teacher.path`, `dataset.train_path`, ... as in examples/*.json) are uploaded first."""
    state = _state(ctx)
    hyper = hyperparameters_from(locals())
    spec = build_spec(load_spec_file(spec_file), teacher_file=teacher_file, teacher_arch=teacher_arch,
                      teacher_params=_json_option(teacher_params, "--teacher-params"), student=student,
                      student_arch=student_arch, student_params=_json_option(student_params, "--student-params"),
                      student_init_file=student_init_file, builtin=builtin, train_file=train_file,
                      validation_file=validation_file, test_file=test_file, validation_fraction=validation_fraction,
                      standardize=standardize, hyperparameters=hyper, baseline=baseline,
                      metadata=_json_option(metadata, "--metadata"),
                      resources={"device": resources_device, "gpus": gpus, "processes": processes},
                      unlabeled_files=unlabeled_file, labels_per_class=labels_per_class)
    # A spec written for kdcore (examples/*.json) names local files: upload them, name them by id.
    local = local_files_of(spec, spec_file.parent if spec_file is not None else Path("."))
    if dry_run:
        if local:
            state.err.print("would upload: " + ", ".join(f"{p} ({purpose}) as {api}" for _, api, purpose, p in local),
                            markup=False)
        _json_dump(state.out, spec)
        return
    if local:
        spec = upload_local_files(state.client, spec, local, state.err)
    job = state.client.create_job(spec)
    if json_out:
        _json_dump(state.out, job.raw)
    elif quiet:
        state.out.print(job.id, markup=False)
    else:
        state.out.print(f"{job.id} {job.status}", markup=False)
    if watch:
        job = watch_job(state, job.id, poll=poll)
        if job.result and not json_out:
            state.out.print(result_table(job.result))
        _finish(state, job)


@jobs_app.command("list")
@handle_errors
def jobs_list(ctx: typer.Context,
              status: Annotated[Optional[JobStatus], typer.Option("--status", "-s")] = None,
              limit: Annotated[int, typer.Option("--limit", min=1, max=100)] = 20,
              all_: Annotated[bool, typer.Option("--all", help="every page")] = False,
              json_out: JsonFlag = False) -> None:
    """List jobs, newest first."""
    state = _state(ctx)
    value = status.value if status else None
    jobs = list(state.client.iter_jobs(value)) if all_ else state.client.list_jobs(value, limit=limit).data
    _show(state, json_out, [j.raw for j in jobs], lambda: state.out.print(_job_table(jobs)))


@jobs_app.command("get")
@handle_errors
def jobs_get(ctx: typer.Context, job_id: str, json_out: JsonFlag = False) -> None:
    """A job's status, progress, spec, error and result."""
    state = _state(ctx)
    job = state.client.get_job(job_id)
    _show(state, json_out, job.raw, lambda: _job_summary(state.out, job))


@jobs_app.command("watch")
@handle_errors
def jobs_watch(ctx: typer.Context, job_id: str, poll: Poll = 1.0) -> None:
    """Follow a job with a live progress bar; exit 0 if it succeeded, 1 if it failed or was cancelled."""
    state = _state(ctx)
    job = watch_job(state, job_id, poll=poll)
    if job.result:
        state.out.print(result_table(job.result))
    _finish(state, job)


@jobs_app.command("cancel")
@handle_errors
def jobs_cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a job: a queued one at once, a running one at its next training step."""
    state = _state(ctx)
    job = state.client.cancel_job(job_id)
    state.out.print(f"{job.id} {job.status}", markup=False)


@jobs_app.command("events")
@handle_errors
def jobs_events(ctx: typer.Context, job_id: str,
                after: Annotated[int, typer.Option("--after", min=0, help="last event id seen")] = 0,
                json_out: JsonFlag = False) -> None:
    """The job's event log."""
    state = _state(ctx)
    events = state.client.events(job_id, after=after)
    if json_out:
        _json_dump(state.out, [e.__dict__ for e in events])
        return
    for e in events:
        message = e.message if e.level == "info" else f"{e.level.upper()}: {e.message}"
        state.out.print(f"{e.id:>4} {e.created_at:%Y-%m-%d %H:%M:%S} {e.type:<12} {message}"
                        if e.created_at else f"{e.id:>4} {e.type:<12} {message}", markup=False)


@jobs_app.command("metrics")
@handle_errors
def jobs_metrics(ctx: typer.Context, job_id: str, json_out: JsonFlag = False) -> None:
    """Per-epoch metrics of the student and the baseline."""
    state = _state(ctx)
    rows = state.client.metrics(job_id)
    if json_out:
        _json_dump(state.out, [m.__dict__ for m in rows])
        return
    table = Table()
    for name in ("run", "epoch", "train loss", "train acc", "val acc", "val agreement", "lr", "seconds"):
        table.add_column(name, justify="left" if name == "run" else "right")
    for m in rows:
        v = m.values
        table.add_row(m.run, str(m.epoch), _fmt(v.get("train_loss"), ".4f"), _fmt(v.get("train_accuracy"), ".2%"),
                      _fmt(v.get("val_accuracy"), ".2%"), _fmt(v.get("val_agreement"), ".2%"),
                      _fmt(v.get("lr"), ".2e"), _fmt(v.get("seconds"), ".1f"))
    state.out.print(table)


@jobs_app.command("download")
@handle_errors
def jobs_download(ctx: typer.Context, job_id: str,
                  output: Annotated[Optional[Path], typer.Option("--output", "-o", help="where to write it "
                                    "(default student.safetensors or student.onnx)")] = None,
                  fmt: Annotated[Optional[StudentFormat], typer.Option("--format", help="default: from the "
                                 "output's suffix, else safetensors")] = None) -> None:
    """Download a succeeded job's student (resumes a partial download; sha256 checked)."""
    state = _state(ctx)
    fmt_value = _student_format(output, fmt)
    output = output or Path(f"student.{fmt_value}")
    path = _download(state, lambda jid, out, on_progress: state.client.download_student(
        jid, out, format=fmt_value, on_progress=on_progress), job_id, output=output)
    state.out.print(f"{path} ({path.stat().st_size:,} bytes, sha256 verified)", markup=False)


# --- distill: upload, create, watch, download -------------------------------------------------------------

@app.command("distill")
@handle_errors
def distill(
        ctx: typer.Context,
        teacher: Annotated[Path, typer.Option("--teacher", exists=True, dir_okay=False, readable=True,
                                              help="the teacher: safetensors state dict, ONNX graph or logits",
                                              rich_help_panel=_T)],
        teacher_arch: TeacherArch = None, teacher_params: TeacherParams = None,
        teacher_logits: Annotated[bool, typer.Option("--teacher-logits", help="the teacher file holds "
                                                     "precomputed logits of the training set",
                                                     rich_help_panel=_T)] = False,
        student: StudentShort = None, student_arch: StudentArch = None, student_params: StudentParams = None,
        data: Annotated[Optional[Path], typer.Option("--data", exists=True, dir_okay=False, help="training data "
                        "(.npz, Parquet or CSV)", rich_help_panel=_D)] = None,
        validation_data: Annotated[Optional[Path], typer.Option("--validation-data", exists=True, dir_okay=False,
                                                                rich_help_panel=_D)] = None,
        test_data: Annotated[Optional[Path], typer.Option("--test-data", exists=True, dir_okay=False,
                                                          rich_help_panel=_D)] = None,
        unlabeled: Annotated[Optional[list[Path]], typer.Option("--unlabeled", exists=True, dir_okay=False,
                             help="inputs without labels for the teacher to label (.npz with x only, a table "
                                  "without a label column); repeatable", rich_help_panel=_D)] = None,
        labels_per_class: LabelsPerClass = None,
        builtin: Builtin = None, validation_fraction: ValidationFraction = None, standardize: Standardize = None,
        temperature: Temperature = None, alpha: Alpha = None, loss: Loss = None, epochs: Epochs = None,
        batch_size: BatchSize = None, lr: Lr = None, weight_decay: WeightDecay = None, optimizer: Optimizer = None,
        momentum: Momentum = None, schedule: Schedule = None, step_size: StepSize = None, gamma: Gamma = None,
        grad_clip_norm: GradClip = None, seed: Seed = None, repeats: Repeats = None, augment: Augment = None, noise_std: NoiseStd = None,
        shift_max: ShiftMax = None, mixup_alpha: MixupAlpha = None,
        early_stopping_patience: EarlyStopping = None, restore_best: RestoreBest = None,
        device: Device = None, baseline: Baseline = None, metadata: Metadata = None,
        resources_device: ResDevice = None, gpus: Gpus = None, processes: Processes = None,
        output: Annotated[Path, typer.Option("--output", "-o", help="where to write the student")] = Path(
            "student.safetensors"),
        fmt: Annotated[Optional[StudentFormat], typer.Option("--format", help="default: from the output's "
                       "suffix, else safetensors")] = None,
        poll: Poll = 1.0) -> None:
    """Upload the teacher (and data), submit, follow, download the student and print the comparison."""
    if data is not None and builtin is not None:
        raise typer.BadParameter("give either --data or --builtin", param_hint="--data")
    state = _state(ctx)
    hyper = hyperparameters_from(locals())
    t_params = _json_option(teacher_params, "--teacher-params")
    s_params = _json_option(student_params, "--student-params")
    meta = _json_option(metadata, "--metadata")
    build_spec(student=student)  # a bad --student is a usage error before anything is uploaded
    client, err = state.client, state.err
    new_uploads: list[str] = []  # ids this command uploaded: deleted again if the submission fails

    def upload(path: Path, purpose: str) -> str:
        """The id of a file with this content: one uploaded before (same sha256 and purpose), else a new upload."""
        found = client.find_file(path, purpose)
        if found is not None:
            err.print(f"reusing {found.id} for {path} (uploaded before: same sha256)", markup=False)
            return found.id
        f = client.upload_file(path, purpose)
        new_uploads.append(f.id)
        err.print(f"uploaded {path} -> {_describe_file(f)}", markup=False)
        return f.id

    try:
        uploaded: dict[str, str] = {}
        for key, path, purpose in (("teacher", teacher, "teacher_logits" if teacher_logits else "teacher"),
                                   ("train", data, "dataset"), ("validation", validation_data, "dataset"),
                                   ("test", test_data, "dataset")):
            if path is not None:
                uploaded[key] = upload(path, purpose)
        unlabeled_ids = [upload(path, "dataset") for path in unlabeled or []]
        spec = build_spec(teacher_file=uploaded["teacher"], teacher_arch=teacher_arch, teacher_params=t_params,
                          student=student, student_arch=student_arch, student_params=s_params,
                          builtin=builtin, train_file=uploaded.get("train"),
                          validation_file=uploaded.get("validation"), test_file=uploaded.get("test"),
                          validation_fraction=validation_fraction, standardize=standardize, hyperparameters=hyper,
                          baseline=baseline, metadata=meta,
                          resources={"device": resources_device, "gpus": gpus, "processes": processes},
                          unlabeled_files=unlabeled_ids, labels_per_class=labels_per_class)
        job = client.create_job(spec)
    except (KDClientError, KeyboardInterrupt):
        _delete_uploads(client, new_uploads, err)
        raise
    err.print(f"job {job.id} submitted; following it (Ctrl-C stops following, not the job)", markup=False)
    job = watch_job(state, job.id, poll=poll)
    _finish(state, job)
    fmt_value = _student_format(output, fmt)
    path = _download(state, lambda jid, out, on_progress: client.download_student(
        jid, out, format=fmt_value, on_progress=on_progress), job.id, output=output)
    state.out.print(result_table(job.result or {}))
    state.out.print(f"student: {path} ({path.stat().st_size:,} bytes, sha256 verified) from job {job.id}",
                    markup=False)


def _delete_uploads(client: Client, file_ids: list[str], err: Console) -> None:
    """After a failed submission: delete the files this command uploaded for it (best effort: a
    file that cannot be deleted is named, and the original error is what the command reports)."""
    for file_id in file_ids:
        try:
            client.delete_file(file_id)
            err.print(f"deleted {file_id}: this command uploaded it for the job that was not submitted", markup=False)
        except KDClientError as e:
            err.print(f"could not delete {file_id} ({e}); delete it with kd files delete {file_id}", markup=False)


def main() -> None:
    """The `kd` console script."""
    app(prog_name="kd")


if __name__ == "__main__":
    main()
