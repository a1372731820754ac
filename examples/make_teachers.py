"""Train the reference teachers deterministically and save them as safetensors state dicts.

    OMP_NUM_THREADS=2 .venv/bin/python examples/make_teachers.py      # writes examples/teachers/*.safetensors

Each teacher is trained from scratch with kdcore's own trainer (plain cross-entropy: no teacher
logits given) on the whole training split of its dataset, seed 0, one thread-count-independent
CPU run. The files are not committed (generated, a few MB); examples/reproduce.py calls this
first when they are missing. Needs examples/data/shapes32_*.npz (examples/make_images.py) for
the image teacher.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kdcore.data import load_builtin, read_dataset_file  # noqa: E402
from kdcore.models import build_model  # noqa: E402
from kdcore.models.architecture import resolve_arch_params  # noqa: E402
from kdcore.spec import Hyperparameters  # noqa: E402
from kdcore.trainer import train  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

HERE = Path(__file__).resolve().parent
TEACHER_DIR = HERE / "teachers"

# name -> (data, arch, arch_params, epochs, learning rate). The arch/arch_params are what the
# example specs give as teacher.arch/teacher.arch_params.
TEACHERS = {
    "mnist1d_cnn": ("mnist1d", "cnn1d", {"channels": [64, 64, 64], "kernel_size": 5}, 15, 3e-3),
    "digits_mlp": ("digits", "mlp", {"hidden_sizes": [256, 256]}, 30, 1e-3),
    "shapes32_resnet32x4": ("shapes32", "resnet32x4", {"width": 1}, 8, 2e-3),
}


def training_data(name: str):
    if name == "shapes32":
        return read_dataset_file(str(HERE / "data" / "shapes32_train.npz"))
    return load_builtin(name)["train"]


def make(name: str) -> Path:
    data, arch, params, epochs, lr = TEACHERS[name]
    ds = training_data(data)
    torch.manual_seed(0)
    model = build_model(arch, params, input_shape=ds.input_shape, num_classes=ds.num_classes)
    hp = Hyperparameters(epochs=epochs, learning_rate=lr, seed=0, batch_size=64, device="cpu")
    result = train(model, train_set=ds, val_set=ds, hp=hp, run="teacher", device=torch.device("cpu"))
    last = result.history[-1]
    TEACHER_DIR.mkdir(parents=True, exist_ok=True)
    path = TEACHER_DIR / f"{name}.safetensors"
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    print(f"{name}: {arch} {resolve_arch_params(arch, params)} trained {epochs} epochs, "
          f"train accuracy {last.val_accuracy:.4f} -> {path}")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", default=list(TEACHERS), help=f"teachers to train (default all: {', '.join(TEACHERS)})")
    a = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for name in a.names:
        make(name)


if __name__ == "__main__":
    main()
