"""B3: index-batched tensors (kdcore.data.IndexBatcher) vs torch.utils.data.DataLoader with
per-sample collation, steps per second of fetching batches alone (no model)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from bench.timing import median_seconds
from kdcore.data import IndexBatcher

N, FEATURES, BATCH = 50_000, 64, 128


def run(repeats: int = 5) -> dict:
    x, y = torch.randn(N, FEATURES), torch.randint(0, 10, (N,))
    batcher = IndexBatcher(N, BATCH, seed=0)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)

    def indexed():
        for idx in batcher.epoch(0):
            x[idx], y[idx]

    def collated():
        for xb, yb in loader:
            pass

    steps = len(batcher)
    t_index = median_seconds(indexed, repeats=repeats)
    t_loader = median_seconds(collated, repeats=repeats)
    return {"index_steps_per_s": steps / t_index, "dataloader_steps_per_s": steps / t_loader,
            "speedup": t_loader / t_index, "setup": f"{N} × {FEATURES} float32, batch {BATCH}, shuffled, one epoch"}


if __name__ == "__main__":
    print(run())
