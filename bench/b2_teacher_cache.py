"""B2: the teacher-logit cache. A teacher with ≥ 10× the student's MACs, run live every step vs its
logits computed once. Targets: cached epoch ≤ 0.5× live; final accuracy equal within 0.5 point."""

from __future__ import annotations

import time

import torch

from bench.timing import median_seconds
from kdcore.data import load_builtin, Standardizer
from kdcore.models import build_model, estimate_macs
from kdcore.spec import Hyperparameters
from kdcore.teacher_logit_cache import compute_teacher_logits
from kdcore.teachers import ModuleTeacher
from kdcore.trainer import train

EPOCHS, BATCH = 5, 64


def run(repeats: int = 3) -> dict:
    parts = load_builtin("digits")
    std = Standardizer.fit(parts["train"].x)
    tr, te = parts["train"].map_x(std.apply), parts["test"].map_x(std.apply)
    torch.manual_seed(0)
    teacher = build_model("mlp", {"hidden_sizes": [1024, 1024]}, input_shape=(64,), num_classes=10)
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(teacher(tr.x), tr.y).backward()
        opt.step()
    teacher.eval()
    live = ModuleTeacher(teacher, input_shape=(64,), num_classes=10)

    def student():
        torch.manual_seed(1)
        return build_model("mlp", {"hidden_sizes": [32]}, input_shape=(64,), num_classes=10)

    ratio_macs = estimate_macs(teacher, (64,)) / estimate_macs(student(), (64,))
    hp_live = Hyperparameters(epochs=EPOCHS, batch_size=BATCH, learning_rate=1e-2, augment="noise", noise_std=0.0,
                              device="cpu")
    hp_cached = Hyperparameters(epochs=EPOCHS, batch_size=BATCH, learning_rate=1e-2, device="cpu")
    t0 = time.perf_counter()
    cache = compute_teacher_logits(live, tr.x)
    cache_cost = time.perf_counter() - t0

    def accuracy(model):
        with torch.no_grad():
            return (model(te.x).argmax(1) == te.y).float().mean().item()

    results = {}
    for name, kwargs, hp in (("live", {"live_teacher": live}, hp_live), ("cached", {"teacher_train_logits": cache},
                                                                          hp_cached)):
        model = student()
        results[name] = median_seconds(lambda: train(student(), train_set=tr, val_set=te, hp=hp, **kwargs),
                                       repeats=repeats) / EPOCHS
        train(model, train_set=tr, val_set=te, hp=hp, **kwargs)
        results[f"{name}_accuracy"] = accuracy(model)
    return {"teacher_to_student_macs": ratio_macs, "live_s_per_epoch": results["live"],
            "cached_s_per_epoch": results["cached"], "ratio": results["cached"] / results["live"],
            "cache_build_s": cache_cost, "live_accuracy": results["live_accuracy"],
            "cached_accuracy": results["cached_accuracy"],
            "setup": f"digits (1438 train), teacher mlp [1024, 1024], student mlp [32], batch {BATCH}, {EPOCHS} epochs"}


if __name__ == "__main__":
    print(run())
