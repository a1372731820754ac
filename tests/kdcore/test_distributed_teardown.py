"""Data-parallel teardown happens in order (issue 16 item 8): rank 0, whose process hosts the
rendezvous store, destroys its process group only after every other rank has passed the final
barrier, torn down its own group and exited. Tearing down at once killed a rank now and then
("terminate called without an active exception", `kd-rank-1 exited with -6`, about 1 run in 1,000);
this checks the order itself, which the race only showed by chance."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
import torch.distributed as dist

from kdcore import distributed
from kdcore.data import load_builtin
from kdcore.models import build_model
from kdcore.spec import Hyperparameters


@pytest.mark.slow  # spawns a Python process that imports torch
def test_rank_zero_destroys_its_group_only_after_the_other_ranks_have_exited(monkeypatch):
    torch.manual_seed(0)
    data = load_builtin("digits")["train"].map_x(lambda x: x / 16)
    train_set, val_set = data.subset(torch.arange(200)), data.subset(torch.arange(200, 300))
    model = build_model("mlp", {"hidden_sizes": [16]}, input_shape=(64,), num_classes=10)
    alive_at_destroy: list[list[str]] = []
    destroy = dist.destroy_process_group

    def recording_destroy(*args, **kwargs):  # runs in rank 0, this process
        alive_at_destroy.append(sorted(p.name for p in multiprocessing.active_children()
                                       if p.name.startswith("kd-rank-")))
        return destroy(*args, **kwargs)

    monkeypatch.setattr(distributed.dist, "destroy_process_group", recording_destroy)
    distributed.train_data_parallel(model, processes=2, device=torch.device("cpu"), train_set=train_set,
                                    val_set=val_set, hp=Hyperparameters(epochs=1, batch_size=50, device="cpu",
                                                                        seed=3, optimizer="sgd"))
    assert alive_at_destroy == [[]], f"rank 0 destroyed its group while {alive_at_destroy} still ran"
