"""B1: kdcore's trainer against the plain loop in reference_loop.py, same work, live teacher, CPU.
Target: kdcore ≤ 1.05× the plain loop per epoch."""

from __future__ import annotations

import torch

from bench.reference_loop import reference_epochs
from bench.timing import median_seconds
from kdcore.data import ArrayDataset
from kdcore.models import build_model
from kdcore.spec import Hyperparameters
from kdcore.teachers import ModuleTeacher
from kdcore.trainer import train

N, FEATURES, CLASSES, BATCH, EPOCHS = 8192, 64, 10, 128, 2


def run(repeats: int = 5) -> dict:
    torch.manual_seed(0)
    x, y = torch.randn(N, FEATURES), torch.randint(0, CLASSES, (N,))
    teacher = build_model("mlp", {"hidden_sizes": [512, 512]}, input_shape=(FEATURES,), num_classes=CLASSES).eval()
    data = ArrayDataset(x, y, CLASSES)
    val = ArrayDataset(x[:256], y[:256], CLASSES)
    live = ModuleTeacher(teacher, input_shape=(FEATURES,), num_classes=CLASSES)
    # kdcore runs the teacher live only with augmentation; noise_std=0 keeps the inputs identical.
    hp = Hyperparameters(epochs=EPOCHS, batch_size=BATCH, learning_rate=1e-3, schedule="constant",
                         augment="noise", noise_std=0.0, device="cpu")

    def student():
        torch.manual_seed(1)
        return build_model("mlp", {"hidden_sizes": [64]}, input_shape=(FEATURES,), num_classes=CLASSES)

    plain = median_seconds(lambda: reference_epochs(student(), teacher, x, y, epochs=EPOCHS, batch_size=BATCH,
                                                    lr=1e-3), repeats=repeats)
    engine = median_seconds(lambda: train(student(), train_set=data, val_set=val, hp=hp, live_teacher=live),
                            repeats=repeats)
    return {"plain_s_per_epoch": plain / EPOCHS, "kdcore_s_per_epoch": engine / EPOCHS, "ratio": engine / plain,
            "setup": f"{N} samples × {FEATURES} features, teacher mlp [512, 512], student mlp [64], batch {BATCH}, "
                     f"{EPOCHS} epochs, AdamW, live teacher; kdcore also validates once per epoch on 256 samples"}


if __name__ == "__main__":
    print(run())
