"""Write examples/data/shapes32_{train,test}.npz: a small CIFAR-shaped (3x32x32, 10 classes) task.

Each class has a fixed random low-frequency colour template (an 8x8x3 pattern upsampled to 32x32);
a sample is its class template shifted by up to 4 pixels, scaled by a random contrast, plus a
random pattern of another class at lower strength and Gaussian pixel noise. Everything comes
from one numpy Generator with a fixed seed, so the files are identical on every machine.

    .venv/bin/python examples/make_images.py            # 1000 train, 500 test samples
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

NUM_CLASSES = 10
SIDE = 32


def make(n: int, rng: np.random.Generator, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, NUM_CLASSES, size=n)
    x = np.empty((n, 3, SIDE, SIDE), dtype=np.float32)
    for i, c in enumerate(y):
        dx, dy = rng.integers(-4, 5, size=2)
        img = np.roll(templates[c], (int(dy), int(dx)), axis=(1, 2)) * rng.uniform(0.6, 1.2)
        distractor = templates[(c + rng.integers(1, NUM_CLASSES)) % NUM_CLASSES]
        img = img + 0.45 * np.roll(distractor, tuple(int(v) for v in rng.integers(-8, 9, size=2)), axis=(1, 2))
        x[i] = img + rng.normal(0.0, 0.9, size=img.shape)
    return x, y.astype(np.int64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    low = rng.normal(0.0, 1.0, size=(NUM_CLASSES, 3, 8, 8)).astype(np.float32)
    templates = low.repeat(4, axis=2).repeat(4, axis=3)  # 8x8 -> 32x32 blocks
    a.out.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", a.train), ("test", a.test)):
        x, y = make(n, rng, templates)
        np.savez(a.out / f"shapes32_{name}.npz", x=x, y=y)
        print(f"wrote {a.out / f'shapes32_{name}.npz'}: x {list(x.shape)}, y {np.bincount(y).tolist()}")


if __name__ == "__main__":
    main()
