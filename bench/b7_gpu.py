"""B7 (GPU only): a CIFAR-shaped resnet32x4 → resnet8x4 pair from kdcore's registry on random 3×32×32
data: samples/s for a plain PyTorch loop (in bench/reference_loop.py's style, but with the batches
indexed on the device) in fp32 and in bf16 autocast, with the teacher live and cached, and kdcore's
trainer (bf16 autocast on CUDA, always) with the teacher live and cached, as a ratio to the plain
bf16 loop. Prints one JSON object; on a machine without CUDA it prints a "skipped: no CUDA device"
line and exits 0.

    python -m bench.b7_gpu             # a few minutes of device time at most
"""

from __future__ import annotations

import json
import sys
import time

import torch

from bench.reference_loop import plain_kd_loss

N, CLASSES, BATCH, EPOCHS, REPEATS = 8192, 100, 128, 1, 3
TEMPERATURE, ALPHA = 4.0, 0.3


def _plain_epoch(student, teacher, x, y, *, bf16: bool, cached: torch.Tensor | None) -> None:
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.01)
    teacher.eval()
    student.train()
    order = torch.randperm(x.shape[0], device=x.device)
    for start in range(0, x.shape[0], BATCH):
        idx = order[start:start + BATCH]
        xb, yb = x[idx], y[idx]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            if cached is None:
                with torch.no_grad():
                    zt = teacher(xb)
            else:
                zt = cached[idx]
            zs = student(xb)
        # the loss in float32, as kdcore's kd_loss computes the soft term
        loss = plain_kd_loss(zs.float(), zt.float(), yb, temperature=TEMPERATURE, alpha=ALPHA)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _samples_per_s(fn) -> float:
    fn()  # warm-up: cuDNN autotuning, allocator
    times = []
    for _ in range(REPEATS):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return N * EPOCHS / sorted(times)[len(times) // 2]


def run() -> dict | None:
    if not torch.cuda.is_available():
        return None
    from kdcore.data import ArrayDataset
    from kdcore.models import build_model
    from kdcore.spec import Hyperparameters
    from kdcore.teacher_logit_cache import compute_teacher_logits
    from kdcore.teachers import ModuleTeacher
    from kdcore.trainer import train

    device = torch.device("cuda")
    torch.manual_seed(0)
    shape = (3, 32, 32)
    x, y = torch.randn(N, *shape), torch.randint(0, CLASSES, (N,))
    teacher = build_model("resnet32x4", {}, input_shape=shape, num_classes=CLASSES).to(device).eval()

    def student():
        torch.manual_seed(1)
        return build_model("resnet8x4", {}, input_shape=shape, num_classes=CLASSES).to(device)

    xd, yd = x.to(device), y.to(device)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    # on the GPU: ModuleTeacher moves its module to `device` (the CPU unless told), and the plain loops share it
    live = ModuleTeacher(teacher, input_shape=shape, num_classes=CLASSES, device=device)
    cached = compute_teacher_logits(live, x, device=device)
    torch.cuda.synchronize()
    cache_build_s = time.perf_counter() - t0
    cached_d = cached.to(device)

    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
           "setup": f"{N} random 3×32×32 samples, {CLASSES} classes, resnet32x4 → resnet8x4, batch {BATCH}, "
                    f"AdamW, median of {REPEATS} epochs after a warm-up", "cache_build_s": cache_build_s}
    for precision, bf16 in (("fp32", False), ("bf16", True)):
        for mode, logits in (("live", None), ("cached", cached_d)):
            out[f"plain_{precision}_{mode}_samples_per_s"] = _samples_per_s(
                lambda: _plain_epoch(student(), teacher, xd, yd, bf16=bf16, cached=logits))
    data = ArrayDataset(x, y, CLASSES)
    val = ArrayDataset(x[:512], y[:512], CLASSES)
    # kdcore runs the teacher live only with augmentation; noise_std=0 keeps the inputs identical.
    live_hp = Hyperparameters(epochs=EPOCHS, batch_size=BATCH, learning_rate=1e-3, schedule="constant",
                              augment="noise", noise_std=0.0, device="cuda")
    cached_hp = Hyperparameters(epochs=EPOCHS, batch_size=BATCH, learning_rate=1e-3, schedule="constant",
                                device="cuda")
    out["kdcore_bf16_live_samples_per_s"] = _samples_per_s(
        lambda: train(student(), train_set=data, val_set=val, hp=live_hp, live_teacher=live, device=device))
    out["kdcore_bf16_cached_samples_per_s"] = _samples_per_s(
        lambda: train(student(), train_set=data, val_set=val, hp=cached_hp, teacher_train_logits=cached,
                      device=device))
    out["bf16_over_fp32_plain_live"] = out["plain_bf16_live_samples_per_s"] / out["plain_fp32_live_samples_per_s"]
    out["cached_over_live_plain_bf16"] = (out["plain_bf16_cached_samples_per_s"]
                                          / out["plain_bf16_live_samples_per_s"])
    out["kdcore_over_plain_bf16_live"] = (out["kdcore_bf16_live_samples_per_s"]
                                          / out["plain_bf16_live_samples_per_s"])
    out["kdcore_over_plain_bf16_cached"] = (out["kdcore_bf16_cached_samples_per_s"]
                                            / out["plain_bf16_cached_samples_per_s"])
    return out


if __name__ == "__main__":
    result = run()
    if result is None:
        print("B7 skipped: no CUDA device (torch.cuda.is_available() is False)")
        sys.exit(0)
    print(json.dumps(result, indent=2))
