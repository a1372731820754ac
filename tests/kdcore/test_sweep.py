"""Issue 7, items 2 and 3: the (temperature, alpha) sweep, early stopping and best-epoch restore."""

from __future__ import annotations

import json

import pytest
import torch

from kdcore.data import load_builtin
from kdcore.errors import SpecError
from kdcore.evaluation import accuracy, predict_logits
from kdcore.export import load_student
from kdcore.pipeline import PipelineCallbacks, load_splits, run_distillation
from kdcore.spec import MAX_SWEEP_EPOCHS, MAX_SWEEP_POINTS, DistillSpec, Hyperparameters
from kdcore.trainer import Callbacks, Stopped, train
from tests.kdcore.factories import distill_spec

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::torch.jit.TracerWarning")


def _field(hp: dict) -> str | None:
    with pytest.raises(SpecError) as info:
        DistillSpec.from_dict({"teacher": {"path": "t.onnx"}, "hyperparameters": hp})
    return info.value.field


# ---- spec ----

def test_lists_are_accepted_and_make_a_grid_in_order():
    hp = DistillSpec.from_dict({"teacher": {"path": "t.onnx"},
                                "hyperparameters": {"temperature": [2, 4], "alpha": [0.1, 0.5, 0.9]}}).hyperparameters
    assert hp.temperature == [2.0, 4.0] and all(isinstance(t, float) for t in hp.temperature)
    assert hp.is_sweep and hp.grid()[:4] == [(2.0, 0.1), (2.0, 0.5), (2.0, 0.9), (4.0, 0.1)]
    assert not Hyperparameters().is_sweep and Hyperparameters().grid() == [(4.0, 0.3)]


@pytest.mark.parametrize("hp, field", [
    ({"temperature": []}, "hyperparameters.temperature"),
    ({"alpha": []}, "hyperparameters.alpha"),
    ({"temperature": [2, 3, 2]}, "hyperparameters.temperature"),
    ({"alpha": [0.1, 0.1]}, "hyperparameters.alpha"),
    ({"temperature": [2, 101]}, "hyperparameters.temperature"),
    ({"temperature": [2, 0]}, "hyperparameters.temperature"),
    ({"alpha": [0.2, -0.1]}, "hyperparameters.alpha"),
    ({"alpha": [0.2, "x"]}, "hyperparameters.alpha"),
    ({"alpha": [0.2, None]}, "hyperparameters.alpha"),
    ({"early_stopping_patience": 0}, "hyperparameters.early_stopping_patience"),
    ({"early_stopping_patience": 1.5}, "hyperparameters.early_stopping_patience"),
    ({"restore_best": 1}, "hyperparameters.restore_best"),
])
def test_bad_items_are_refused_naming_the_field(hp, field):
    assert _field(hp) == field


def test_over_budget_grids_are_refused_naming_hyperparameters():
    temps = [float(t) for t in range(1, 7)]
    alphas = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert len(temps) * len(alphas) == MAX_SWEEP_POINTS
    assert _field({"temperature": temps, "alpha": alphas, "epochs": MAX_SWEEP_EPOCHS // 36 + 1}) == "hyperparameters"
    DistillSpec.from_dict({"teacher": {"path": "t.onnx"},
                           "hyperparameters": {"temperature": temps, "alpha": alphas, "epochs": MAX_SWEEP_EPOCHS // 36}})
    assert _field({"temperature": temps + [7.0], "alpha": alphas, "epochs": 1}) == "hyperparameters"


# ---- the sweep, end to end ----

class Recorder(PipelineCallbacks):
    def __init__(self, stop_after_checkpoints: int | None = None):
        self.events, self.epochs, self.steps, self.phases = [], [], [], []
        self.checkpoints = 0
        self.stop_after = stop_after_checkpoints

    def on_phase(self, phase):
        self.phases.append(phase)

    def on_event(self, type, message, data=None):
        self.events.append((type, data))
        if type == "sweep_checkpoint":
            self.checkpoints += 1

    def on_epoch_end(self, m):
        self.epochs.append(m)

    def on_step(self, info):
        self.steps.append((info.run, info.point, info.points, info.step))

    def should_stop(self):
        return self.stop_after is not None and self.checkpoints >= self.stop_after


def test_a_2x2_sweep_picks_the_best_point_and_exports_it(files, tmp_path):
    spec = distill_spec(files["state_dict"], temperature=[1.0, 8.0], alpha=[0.0, 0.9])
    cb = Recorder()
    summary = run_distillation(spec, out_dir=tmp_path, callbacks=cb, export_onnx_file=False).to_dict()
    sweep = summary["sweep"]
    points = sweep["points"]
    assert [(p["temperature"], p["alpha"]) for p in points] == [(1.0, 0.0), (1.0, 0.9), (8.0, 0.0), (8.0, 0.9)]
    assert all(p["epochs_run"] == 2 and len(p["history"]) == 2 for p in points)
    key = [(p["val_accuracy"], p["val_agreement"]) for p in points]
    best = max(range(4), key=lambda i: (key[i], -i))
    assert (sweep["best"]["temperature"], sweep["best"]["alpha"]) == (points[best]["temperature"], points[best]["alpha"])
    assert (summary["temperature"], summary["alpha"]) == (points[best]["temperature"], points[best]["alpha"])
    # the baseline was trained once; the student's epochs reported are the chosen point's
    assert cb.phases.count("baseline") == 1
    assert [m.run for m in cb.epochs] == ["student", "student", "baseline", "baseline"]
    assert all(m.point == best for m in cb.epochs[:2])
    assert cb.epochs[1].val_accuracy == points[best]["val_accuracy"]
    assert sum(1 for t, _ in cb.events if t == "sweep_point") == 4
    assert {p for r, p, n, _ in cb.steps if r == "student"} == {0, 1, 2, 3}
    # the exported student is the chosen point: its predictions give the summary's accuracy
    splits = load_splits(spec)
    model = load_student(tmp_path / "student.safetensors")
    assert accuracy(predict_logits(model, splits.eval_set.x), splits.eval_set.y) == pytest.approx(
        summary["student"]["accuracy"])
    assert (predict_logits(model, splits.val.x).argmax(1) == splits.val.y).float().mean().item() == \
        pytest.approx(points[best]["val_accuracy"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["run"] for r in rows] == ["student", "student", "baseline", "baseline"]
    assert json.loads((tmp_path / "summary.json").read_text())["sweep"]["best"] == sweep["best"]


def test_no_sweep_keeps_sweep_null(files, tmp_path):
    summary = run_distillation(distill_spec(files["state_dict"], baseline=False, epochs=1), out_dir=tmp_path,
                               export_onnx_file=False).to_dict()
    assert summary["sweep"] is None and summary["temperature"] == 4.0
    assert summary["student"]["epochs_run"] == 1 and summary["student"]["stopped_early"] is False


def test_an_interrupted_sweep_resumes_per_point_bit_identically(files, tmp_path):
    spec = distill_spec(files["state_dict"], baseline=False, temperature=[2.0, 6.0], epochs=2)
    whole = run_distillation(spec, out_dir=tmp_path / "a", checkpoint_dir=tmp_path / "ca", export_onnx_file=False).to_dict()
    with pytest.raises(Stopped):  # point 0 done, point 1 stopped after its first epoch
        run_distillation(spec, out_dir=tmp_path / "b", checkpoint_dir=tmp_path / "cb",
                         callbacks=Recorder(stop_after_checkpoints=3), export_onnx_file=False)
    assert sorted(p.name for p in (tmp_path / "cb").iterdir()) == ["student-0", "student-1"]
    cb = Recorder()
    resumed = run_distillation(spec, out_dir=tmp_path / "b", checkpoint_dir=tmp_path / "cb", callbacks=cb,
                               export_onnx_file=False).to_dict()
    assert [t for t, _ in cb.events].count("sweep_epoch") == 1  # only point 1's epoch 2 trained again
    strip = lambda pts: [{k: v for k, v in p.items() if k != "history"} for p in pts]  # noqa: E731
    assert strip(resumed["sweep"]["points"]) == strip(whole["sweep"]["points"])
    a, b = load_student(tmp_path / "a" / "student.safetensors"), load_student(tmp_path / "b" / "student.safetensors")
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k


# ---- early stopping and restore_best ----

def _digits():
    data = load_builtin("digits")["train"]
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(data.num_samples, generator=g)
    return data.subset(perm[:1200]), data.subset(perm[1200:])


def _train(hp: Hyperparameters, **kw):
    train_set, val_set = _digits()
    torch.manual_seed(0)
    from kdcore.models import build_model
    model = build_model("mlp", {"hidden_sizes": [16]}, input_shape=(64,), num_classes=10)
    return model, train(model, train_set=train_set, val_set=val_set, hp=hp, run="student", **kw), val_set


def test_early_stopping_stops_when_accuracy_plateaus():
    hp = Hyperparameters(epochs=6, learning_rate=1e-12, device="cpu", early_stopping_patience=1)
    _, run, _ = _train(hp)
    assert run.stopped_early and run.epochs_completed == 2 and run.best_epoch == 1
    off = Hyperparameters(epochs=3, learning_rate=1e-12, device="cpu")
    _, run, _ = _train(off)
    assert not run.stopped_early and run.epochs_completed == 3


def test_restore_best_ends_with_the_best_epochs_weights():
    hp = Hyperparameters(epochs=6, learning_rate=0.3, device="cpu", restore_best=True, schedule="constant")
    model, run, val = _train(hp)
    accs = [m.val_accuracy for m in run.history]
    assert run.best_epoch == accs.index(max(accs)) + 1 and run.restored_best
    assert (predict_logits(model, val.x).argmax(1) == val.y).float().mean().item() == max(accs)


class StopAfter(Callbacks):
    def __init__(self, n):
        self.n, self.saved = n, 0

    def on_checkpoint(self, info):
        self.saved += 1

    def should_stop(self):
        return self.saved >= self.n


@pytest.mark.parametrize("stop_after", [2, 3])
def test_early_stopping_and_restore_best_resume_bit_identically(tmp_path, stop_after):
    hp = Hyperparameters(epochs=8, learning_rate=0.3, device="cpu", restore_best=True,
                         early_stopping_patience=2, schedule="constant")
    whole, run_whole, _ = _train(hp, checkpoint_dir=tmp_path / "a")
    with pytest.raises(Stopped):
        _train(hp, checkpoint_dir=tmp_path / "b", callbacks=StopAfter(stop_after))
    resumed, run_resumed, _ = _train(hp, checkpoint_dir=tmp_path / "b")
    assert (run_resumed.best_epoch, run_resumed.stopped_early, run_resumed.epochs_completed) == \
        (run_whole.best_epoch, run_whole.stopped_early, run_whole.epochs_completed)
    assert [m.val_accuracy for m in run_resumed.history] == [m.val_accuracy for m in run_whole.history]
    for (k, va), (_, vb) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(va, vb), k


def test_the_summary_records_epochs_and_best_epoch_for_student_and_baseline(files, tmp_path):
    spec = distill_spec(files["state_dict"], epochs=4, learning_rate=1e-12, early_stopping_patience=1, restore_best=True)
    summary = run_distillation(spec, out_dir=tmp_path, export_onnx_file=False).to_dict()
    for run in ("student", "baseline"):
        s = summary[run]
        assert (s["epochs_run"], s["best_epoch"], s["stopped_early"], s["restored_best"]) == (2, 1, True, True), run
