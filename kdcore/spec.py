"""The distillation spec: what to distil, into what, on which data, with which knobs.

Plain dataclasses with defaults, one per component. `DistillSpec.from_dict` validates a
JSON-like dict and raises SpecError naming the dotted field; `to_dict` echoes every resolved default.
Each field carries its one line of help as `metadata["help"]` (FIELD_HELP collects them by dotted name).

File fields (`teacher.path`, `student.init_path`, `dataset.train_path`, `dataset.validation_path`,
`dataset.test_path`, `dataset.unlabeled_paths`) hold an opaque reference to a file, which the caller
resolves: `run_distillation` opens them as local paths, so the CLI passes the paths it was given and the
service's worker the paths of the copies it fetched; checking a spec needs no file, and the service's API
checks one with its upload ids as the references. The service names these fields `*_file_id(s)`; the
mapping is one table, jobs/spec_files.py.
"""

from __future__ import annotations

import contextlib

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, get_type_hints

from kdcore.errors import SpecError

# Limits a spec is checked against (named, so the README and the API can quote them).
# T is kept where the T² factor does what the objective says (docs/KD_MATH.md, facts 5 and 7). Below
# MIN_TEMPERATURE the teacher's soft targets are one-hot in float32 for any logit gap over about 10
# (exp(-gap / T) underflows), and the soft term's gradient, T·(Q - P) with the T² factor, falls under
# a tenth of its scale at T = 1, silently re-weighting alpha; T -> 0 divides logits by ~0 (T = 1e-300:
# inf, a NaN loss). Above MAX_TEMPERATURE the targets are uniform to within 1 % for logit gaps under 1.
MIN_TEMPERATURE = 0.1
MAX_TEMPERATURE = 100.0
MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 65536
# A sweep (temperature and/or alpha given as lists) trains every (T, alpha) point of the grid.
MAX_SWEEP_POINTS = 36  # grid size
MAX_SWEEP_EPOCHS = 2000  # (grid size + repeats - 1) × epochs: the whole job's training budget
MAX_REPEATS = 10  # hyperparameters.repeats: seeds the student (and baseline) are trained with
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
# `augment` is "none" or a list of these (a single name is a one-item list). Any of them makes the
# teacher run live on the augmented view the student sees (Beyer et al. 2022).
AUGMENTATIONS = ("noise", "shift", "crop_flip", "mixup")
MAX_SHIFT = 64  # shift_max: positions (shift) or padding pixels (crop_flip)
MAX_UNLABELED_FILES = 16  # files in dataset.unlabeled_paths
DEVICES = ("auto", "cpu", "cuda")
# What a job asks of the machine that runs it (`resources`): the device kind, the GPUs on one machine,
# and the data-parallel processes (one per GPU on CUDA; on CPU, gloo processes on one machine).
RESOURCE_DEVICES = ("cpu", "cuda")
MAX_GPUS = 8  # GPUs one job may ask for (one machine)
MAX_CPU_PROCESSES = 8  # data-parallel processes of a CPU job


def _field(default: Any = MISSING, *, help: str, factory: Any = MISSING) -> Any:
    """A spec field with its one line of help (`metadata["help"]`): `python -m kdcore run --help` and the
    service's request schema show it."""
    return field(default=default, default_factory=factory, metadata={"help": help})


@dataclass
class TeacherSpec:
    path: str | None = _field(None, help=(
        "teacher file: safetensors state dict (needs teacher.arch), ONNX graph, or precomputed training-set "
        "logits (.npz array 'logits' N×C, or safetensors tensor 'logits')"))
    arch: str | None = _field(None, help=(
        "registry architecture of a safetensors state-dict teacher (mlp, cnn1d, lenet, cnn2d, resnet, resnet8x4, "
        "resnet32x4); omit for ONNX and logits"))
    arch_params: dict[str, Any] = _field(
        factory=dict, help="parameters of teacher.arch, e.g. {\"hidden_sizes\": [256]}")


@dataclass
class StudentSpec:
    arch: str = _field("mlp", help="registry architecture of the student (default mlp)")
    arch_params: dict[str, Any] = _field(
        factory=dict, help="parameters of student.arch; every default is filled in and echoed back")
    init_path: str | None = _field(
        None, help="optional initial student weights (safetensors state dict of the same architecture)")


@dataclass
class DatasetSpec:
    builtin: str | None = _field(
        None, help="builtin dataset: mnist1d (generated offline, 40-sample signals) or digits (8×8 as 64 features)")
    train_path: str | None = _field(
        None, help="training data: .npz (x float N×…, y int N), Parquet or CSV with a 'label' column")
    validation_path: str | None = _field(
        None, help="optional validation data in the same format; else carved out of train")
    test_path: str | None = _field(
        None, help="optional test data; the final evaluation uses it (else the validation split)")
    validation_fraction: float = _field(
        0.1, help="share of train held out for validation when none is given (default 0.1)")
    standardize: bool = _field(
        False, help="standardise features with mean/std of the training split only (default false)")
    unlabeled_paths: list[str] = _field(factory=list, help=(
        "files whose inputs join the training inputs: .npz with 'x' only, CSV/Parquet without a 'label' column, "
        "or labelled files (label -1 marks an unlabelled row); the teacher labels them. At most "
        f"{MAX_UNLABELED_FILES} files"))
    labels_per_class: int | None = _field(None, help=(
        "keep this many labels per class of the training split (seeded, stratified) and use the other training "
        "rows as unlabelled inputs; null keeps every label (default)"))


@dataclass
class Hyperparameters:
    temperature: float | list[float] = _field(4.0, help=(
        f"softmax temperature T, {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g} (default 4); a list of distinct values sweeps "
        "them (see alpha)"))
    alpha: float | list[float] = _field(0.3, help=(
        "weight of the hard-label cross-entropy, 0..1; 1 - alpha weights the teacher (default 0.3); a list of "
        "distinct values sweeps them: every (temperature, alpha) point is trained and the one with the best "
        f"validation accuracy becomes the student (at most {MAX_SWEEP_POINTS} points and {MAX_SWEEP_EPOCHS} "
        "epochs in all)"))
    loss: str = _field("forward_kl", help="soft term: forward_kl (default), reverse_kl, js, mse_logits")
    epochs: int = _field(10, help=f"training epochs, 1..{MAX_EPOCHS} (default 10)")
    batch_size: int = _field(128, help=f"samples per step, 1..{MAX_BATCH_SIZE} (default 128)")
    learning_rate: float = _field(1e-3, help="peak learning rate (default 0.001)")
    weight_decay: float = _field(0.01, help="decoupled weight decay for adamw, L2 for sgd (default 0.01)")
    optimizer: str = _field("adamw", help="adamw (default) or sgd (Nesterov momentum)")
    momentum: float = _field(0.9, help="sgd momentum (default 0.9)")
    schedule: str = _field(
        "cosine", help="cosine (default, per step), step (×gamma every step_size epochs) or constant")
    step_size: int = _field(30, help="epochs between decays for the step schedule (default 30)")
    gamma: float = _field(0.1, help="decay factor for the step schedule (default 0.1)")
    grad_clip_norm: float | None = _field(
        None, help="clip the global gradient norm to this value; null = off (default)")
    seed: int = _field(0, help="seed for initial weights, batch order and the validation split (default 0)")
    repeats: int = _field(1, help=(
        f"train the student (and the baseline) this many times, 1..{MAX_REPEATS} (default 1): with seed, seed + 1, ... "
        "for initial weights and batch order, on the same data splits (those of seed); result.repeats gives each "
        "run's score with mean and standard deviation, and of the gain over the baseline. The delivered student is "
        "the run with seed; in a sweep the repeats train the chosen point"))
    augment: str | list[str] = _field("none", help=(
        "none (default; teacher logits cached once) or a list of: noise (Gaussian input noise), shift (random "
        "circular shift of 1-D signals up to shift_max), crop_flip (C×H×W images: random crop after padding by "
        "shift_max, horizontal flip), mixup (convex mix of two inputs; the hard term uses the mixed labels). With "
        "any of them the teacher runs live on the exact view the student sees"))
    noise_std: float = _field(0.1, help="standard deviation of the input noise (default 0.1)")
    shift_max: int = _field(
        4, help=f"largest shift (shift) or crop padding (crop_flip), 1..{MAX_SHIFT} (default 4)")
    mixup_alpha: float = _field(0.4, help="mixup weight ~ Beta(mixup_alpha, mixup_alpha), > 0 (default 0.4)")
    device: str = _field("auto", help="auto (CUDA when present, default), cpu or cuda")
    early_stopping_patience: int | None = _field(None, help=(
        "stop a run when its validation accuracy has not improved for this many epochs; null = off (default)"))
    restore_best: bool = _field(False, help=(
        "end each run with the weights of its epoch with the best validation accuracy (default false)"))

    @property
    def augmentations(self) -> tuple[str, ...]:
        """The augmentations in the order they are applied; () for none."""
        if isinstance(self.augment, list):
            return tuple(self.augment)
        return () if self.augment == "none" else (self.augment,)

    @property
    def is_sweep(self) -> bool:
        return isinstance(self.temperature, list) or isinstance(self.alpha, list)

    def grid(self) -> list[tuple[float, float]]:
        """Every (temperature, alpha) point, temperature-major, in the order given."""
        return [(t, a) for t in _as_list(self.temperature) for a in _as_list(self.alpha)]


@dataclass
class ResourcesSpec:
    """What the job needs from the machine. `gpus` defaults to 0 on cpu and 1 on cuda; `processes`
    (data-parallel processes, torch.distributed) to 1 on cpu and to `gpus` on cuda. More than one
    process trains with DDP: each process takes a shard of every global batch (the batch size stays
    the global one), gradients are averaged, rank 0 reports and checkpoints."""

    device: str = _field("cpu", help=(
        "cpu (default) or cuda: the kind of machine the job runs on; the service routes it to the queue kd.cpu "
        "or kd.cuda.<gpus>"))
    gpus: int | None = _field(None, help=f"GPUs on one machine, 1..{MAX_GPUS} for cuda (default 1), 0 for cpu")
    processes: int | None = _field(None, help=(
        f"data-parallel training processes (torch.distributed DDP): on cuda one per GPU (default resources.gpus); "
        f"on cpu 1..{MAX_CPU_PROCESSES} gloo processes (default 1)"))

    def resolve(self) -> None:
        """Check the choices and limits and fill in the defaults (SpecError names the field)."""
        if self.device not in RESOURCE_DEVICES:
            raise SpecError(f"must be one of {', '.join(RESOURCE_DEVICES)}", field="resources.device")
        if self.device == "cpu":
            if self.gpus not in (None, 0):
                raise SpecError("a cpu job takes no GPUs (0); ask for device cuda", field="resources.gpus")
            self.gpus = 0
            if self.processes is None:
                self.processes = 1
            if not 1 <= self.processes <= MAX_CPU_PROCESSES:
                raise SpecError(f"must be between 1 and {MAX_CPU_PROCESSES} (MAX_CPU_PROCESSES)",
                                field="resources.processes")
            return
        if self.gpus is None:
            self.gpus = 1
        if not 1 <= self.gpus <= MAX_GPUS:
            raise SpecError(f"must be between 1 and {MAX_GPUS} (MAX_GPUS) for a cuda job", field="resources.gpus")
        if self.processes is None:
            self.processes = self.gpus
        if self.processes != self.gpus:
            raise SpecError(f"a cuda job runs one process per GPU: must be {self.gpus} (resources.gpus) or omitted",
                            field="resources.processes")


def _as_list(value: float | list[float]) -> list[float]:
    return list(value) if isinstance(value, list) else [value]


@dataclass
class DistillSpec:
    teacher: TeacherSpec
    student: StudentSpec = field(default_factory=StudentSpec)
    dataset: DatasetSpec = field(default_factory=lambda: DatasetSpec(builtin="digits"))
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    baseline: bool = _field(True, help=(
        "also train the same student from scratch on the labelled rows, for the same number of optimizer steps "
        "and seed (default true; false when no training row is labelled)"))
    metadata: dict[str, Any] = _field(
        factory=dict, help="free-form JSON object stored with the job and the student file")
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)

    @classmethod
    def from_dict(cls, data: Any) -> "DistillSpec":
        if not isinstance(data, dict):
            raise SpecError("the spec must be a JSON object")
        _reject_unknown(data, cls, "")
        spec = cls(
            teacher=_build(TeacherSpec, data.get("teacher", {}), "teacher"),
            student=_build(StudentSpec, data.get("student", {}), "student"),
            dataset=_build(DatasetSpec, data.get("dataset", {"builtin": "digits"}), "dataset"),
            hyperparameters=_build(Hyperparameters, data.get("hyperparameters", {}), "hyperparameters"),
            baseline=_check_type(data.get("baseline", True), bool, "baseline"),
            metadata=_check_type(data.get("metadata", {}), dict, "metadata"),
            resources=_build(ResourcesSpec, data.get("resources", {}), "resources"),
        )
        spec.given = _given_fields(data)
        given = data.get("resources")
        if isinstance(given, dict) and "device" not in given or given is None:
            if spec.hyperparameters.device == "cuda":  # a spec that says cuda only there asks for a GPU
                spec.resources.device = "cuda"
        spec.validate()
        return spec

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def was_given(self, dotted: str) -> bool:
        """Whether the dict this spec was built from said `dotted` (e.g. "hyperparameters.alpha")
        rather than leaving it to its default. A spec built in code counts every field as given."""
        given = getattr(self, "given", None)
        return True if given is None else dotted in given

    def resolve_labels(self, num_labeled: int) -> None:
        """Fit the spec to training data with `num_labeled` labelled rows. With none there is no
        hard term and nothing to train from scratch on: alpha becomes 0 (an alpha > 0 that was
        asked for is a SpecError) and so does the baseline (a baseline asked for is a SpecError)."""
        if num_labeled > 0:
            return
        hp = self.hyperparameters
        if self.was_given("hyperparameters.alpha") and any(a > 0 for a in _as_list(hp.alpha)):
            raise SpecError("the training data has no labelled row, so there is no hard-label term: "
                            "alpha must be 0 (or omitted)", field="hyperparameters.alpha")
        hp.alpha = 0.0
        if self.baseline and self.was_given("baseline"):
            raise SpecError("the training data has no labelled row: there is nothing to train a student "
                            "from scratch on; set baseline to false (or omit it)", field="baseline")
        self.baseline = False

    def validate(self) -> None:
        """Checks that need no file: ranges and choices. Every failing field is reported at once:
        SpecError names the first, its `errors` lists all (field, reason) pairs. Shapes and classes
        are checked by the pipeline (kdcore.pipeline.check_spec) once the files are known."""
        errors = _Errors()
        hp = self.hyperparameters
        for name, ok, reason in (
                ("temperature", lambda t: MIN_TEMPERATURE <= t <= MAX_TEMPERATURE,
                 f"must be between {MIN_TEMPERATURE:g} (MIN_TEMPERATURE) and {MAX_TEMPERATURE:g} (MAX_TEMPERATURE)"),
                ("alpha", lambda a: 0.0 <= a <= 1.0, "must be between 0 and 1")):
            value = getattr(hp, name)
            values = _as_list(value)
            if isinstance(value, list) and not values:
                errors.add("must be a number or a non-empty list of numbers", field=f"hyperparameters.{name}")
            bad = [v for v in values if not ok(v)]
            if bad:
                errors.add(reason if not isinstance(value, list) else f"{reason} (item {bad[0]:g})",
                           field=f"hyperparameters.{name}")
            elif len(set(values)) != len(values):
                errors.add("the list must not repeat a value", field=f"hyperparameters.{name}")
        if not 1 <= hp.epochs <= MAX_EPOCHS:
            errors.add(f"must be between 1 and {MAX_EPOCHS}", field="hyperparameters.epochs")
        points = len(hp.grid())
        if not 1 <= hp.epochs <= MAX_EPOCHS:
            pass  # the sweep's epoch budget is judged on a valid epoch count only
        elif points > MAX_SWEEP_POINTS:
            errors.add(f"the sweep has {points} (temperature, alpha) points, over the limit of "
                       f"{MAX_SWEEP_POINTS} (MAX_SWEEP_POINTS)", field="hyperparameters")
        elif not 1 <= hp.repeats <= MAX_REPEATS:
            pass  # reported below
        elif (points + hp.repeats - 1) * hp.epochs > MAX_SWEEP_EPOCHS:
            runs = (f"{points} points" if hp.repeats == 1 else f"{hp.repeats} repeats" if points == 1
                    else f"{points} points + {hp.repeats - 1} repeats")
            errors.add(f"the {'sweep' if hp.repeats == 1 else 'job'} needs {runs} × {hp.epochs} epochs = "
                       f"{(points + hp.repeats - 1) * hp.epochs} epochs, over the limit of {MAX_SWEEP_EPOCHS} "
                       f"(MAX_SWEEP_EPOCHS)", field="hyperparameters")
        if not 1 <= hp.repeats <= MAX_REPEATS:
            errors.add(f"must be between 1 and {MAX_REPEATS} (MAX_REPEATS)", field="hyperparameters.repeats")
        if hp.early_stopping_patience is not None and hp.early_stopping_patience < 1:
            errors.add("must be >= 1 or null", field="hyperparameters.early_stopping_patience")
        if not 1 <= hp.batch_size <= MAX_BATCH_SIZE:
            errors.add(f"must be between 1 and {MAX_BATCH_SIZE}", field="hyperparameters.batch_size")
        if not (0 < hp.learning_rate <= 10) or not math.isfinite(hp.learning_rate):
            errors.add("must be > 0 and <= 10", field="hyperparameters.learning_rate")
        if not 0 <= hp.weight_decay <= 1:
            errors.add("must be between 0 and 1", field="hyperparameters.weight_decay")
        if not 0 <= hp.momentum < 1:
            errors.add("must be >= 0 and < 1", field="hyperparameters.momentum")
        if hp.step_size < 1:
            errors.add("must be >= 1", field="hyperparameters.step_size")
        if not 0 < hp.gamma <= 1:
            errors.add("must be > 0 and <= 1", field="hyperparameters.gamma")
        if hp.grad_clip_norm is not None and not hp.grad_clip_norm > 0:
            errors.add("must be > 0 or null", field="hyperparameters.grad_clip_norm")
        if not 0 <= hp.noise_std <= 10:
            errors.add("must be between 0 and 10", field="hyperparameters.noise_std")
        if hp.seed < 0 or hp.seed >= 2**63:
            errors.add("must be a non-negative 64-bit integer", field="hyperparameters.seed")
        elif 1 <= hp.repeats <= MAX_REPEATS and hp.seed + hp.repeats - 1 >= 2**63:
            errors.add("the last repeat's seed (seed + repeats - 1) must stay below 2**63",
                       field="hyperparameters.repeats")
        with errors.collect():
            _check_augment(hp.augment)
        if not 1 <= hp.shift_max <= MAX_SHIFT:
            errors.add(f"must be between 1 and {MAX_SHIFT}", field="hyperparameters.shift_max")
        if not 0 < hp.mixup_alpha <= 10:
            errors.add("must be > 0 and <= 10", field="hyperparameters.mixup_alpha")
        for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("device", DEVICES)):
            if getattr(hp, name) not in choices:
                errors.add(f"must be one of {', '.join(choices)}", field=f"hyperparameters.{name}")
        from kdcore.losses import LOSSES  # late import: losses imports torch

        with errors.collect():
            LOSSES.get(hp.loss, field="hyperparameters.loss")
        ds = self.dataset
        if (ds.builtin is None) == (ds.train_path is None):
            errors.add("give either builtin or train_path (exactly one)", field="dataset")
        if ds.builtin is not None and (ds.validation_path or ds.test_path):
            errors.add("a builtin dataset brings its own splits", field="dataset.builtin")
        if ds.labels_per_class is not None and ds.labels_per_class < 1:
            errors.add("must be >= 1 or null", field="dataset.labels_per_class")
        if len(ds.unlabeled_paths) > MAX_UNLABELED_FILES:
            errors.add(f"at most {MAX_UNLABELED_FILES} files (MAX_UNLABELED_FILES)",
                       field="dataset.unlabeled_paths")
        if not 0 < ds.validation_fraction < 1:
            errors.add("must be between 0 and 1 (exclusive)", field="dataset.validation_fraction")
        if self.teacher.path is None:
            errors.add("a teacher file is required", field="teacher.path")
        res = self.resources
        with errors.collect():
            res.resolve()
        if errors.has("resources"):
            pass  # the device and process checks below need resolved resources
        elif hp.device != "auto" and hp.device != res.device:
            errors.add(f"is {hp.device} but resources.device is {res.device}; say the same or use auto",
                       field="hyperparameters.device")
        elif res.processes > 1 and hp.augmentations:
            # The processes share cached teacher logits; a live teacher would run in every one.
            errors.add("data-parallel training (resources.processes > 1) needs cached teacher logits: "
                       "use augment none", field="resources.processes")
        errors.raise_if_any()


class _Errors:
    """What `validate` found, in spec order: raised together as one SpecError (its `errors`)."""

    def __init__(self):
        self.found: list[tuple[str | None, str]] = []

    def add(self, message: str, *, field: str | None = None) -> None:
        self.found.append((field, message))

    def has(self, prefix: str) -> bool:
        return any(f is not None and (f == prefix or f.startswith(prefix + ".")) for f, _ in self.found)

    @contextlib.contextmanager
    def collect(self):
        try:
            yield
        except SpecError as e:
            self.found.extend(e.errors or [(e.field, e.message)])

    def raise_if_any(self) -> None:
        if self.found:
            field, message = self.found[0]
            raise SpecError(message, field=field, errors=self.found)


def _check_augment(augment: str | list[str]) -> None:
    where = "hyperparameters.augment"
    names = augment if isinstance(augment, list) else ([] if augment == "none" else [augment])
    for name in names:
        if name not in AUGMENTATIONS:
            raise SpecError(f"must be none or a list of {', '.join(AUGMENTATIONS)} (got {name!r})", field=where)
    if len(set(names)) != len(names):
        raise SpecError("the list must not repeat an augmentation", field=where)


def _given_fields(data: dict) -> frozenset[str]:
    """Dotted names of the fields a spec dict states (one level of sections)."""
    given = set()
    for key, value in data.items():
        given.add(key)
        if isinstance(value, dict) and key != "metadata":
            given.update(f"{key}.{sub}" for sub in value)
    return frozenset(given)


def _reject_unknown(data: dict, cls: type, prefix: str) -> None:
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            raise SpecError(f"unknown field; expected one of {', '.join(sorted(known))}",
                            field=f"{prefix}{key}")


def _build(cls: type, data: Any, name: str):
    if not isinstance(data, dict):
        raise SpecError("must be an object", field=name)
    _reject_unknown(data, cls, f"{name}.")
    defaults = cls()
    values = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        default = getattr(defaults, f.name)
        values[f.name] = _coerce(value, default, f.type, f"{name}.{f.name}")
    return cls(**values)


def _coerce(value: Any, default: Any, annotation: str, where: str) -> Any:
    optional = "None" in str(annotation)
    if value is None:
        if optional:
            return None
        raise SpecError("must not be null", field=where)
    if "list[float]" in str(annotation) and isinstance(value, list):
        return [_coerce(v, None, "float", where) for v in value]
    if "list[str]" in str(annotation):
        if isinstance(value, list):
            return [_check_type(v, str, where) for v in value]
        if "|" not in str(annotation):
            raise SpecError("must be a list of strings", field=where)
    if "dict" in str(annotation):
        return _check_type(value, dict, where)
    if "bool" in str(annotation):
        return _check_type(value, bool, where)
    if "int" in str(annotation) and "float" not in str(annotation):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError("must be an integer", field=where)
        return value
    if "float" in str(annotation):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError("must be a number", field=where)
        if not math.isfinite(value):
            raise SpecError("must be finite", field=where)
        return float(value)
    if "str" in str(annotation):
        return _check_type(value, str, where)
    return value


def _check_type(value: Any, kind: type, where: str) -> Any:
    if kind is not bool and isinstance(value, bool):
        raise SpecError(f"must be {kind.__name__}", field=where)
    if not isinstance(value, kind):
        names = {dict: "an object", bool: "true or false", str: "a string"}
        raise SpecError(f"must be {names.get(kind, kind.__name__)}", field=where)
    return value


def _field_help() -> dict[str, str]:
    """Every field's help by dotted name ("teacher.path", ..., "baseline", "metadata"), in declaration order."""
    sections = get_type_hints(DistillSpec)
    out: dict[str, str] = {}
    for top in fields(DistillSpec):
        if "help" in top.metadata:
            out[top.name] = top.metadata["help"]
        else:
            out.update((f"{top.name}.{f.name}", f.metadata["help"]) for f in fields(sections[top.name]))
    return out


# One line of help per field, for `python -m kdcore run --help` and the API's schema; taken from the
# fields' metadata. tests/kdcore/test_spec.py checks that every field has one.
FIELD_HELP: dict[str, str] = _field_help()
