"""Fixtures of the kdcore tests: a trained digits teacher and its files in every teacher format."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.data import load_builtin
from kdcore.evaluation import predict_logits
from tests.kdcore.factories import save_state_dict, train_digits_teacher


@pytest.fixture(scope="module")
def teacher_model() -> torch.nn.Module:
    return train_digits_teacher()


@pytest.fixture(scope="module")
def files(tmp_path_factory, teacher_model) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("teachers")
    out = {"state_dict": save_state_dict(teacher_model, d / "teacher.safetensors")}
    x = torch.zeros(1, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(teacher_model, x, str(d / "teacher.onnx"), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    out["onnx"] = d / "teacher.onnx"
    train = load_builtin("digits")["train"]  # the builtin split in its original order
    np.savez(d / "logits.npz", logits=predict_logits(teacher_model, train.x).numpy())
    out["logits"] = d / "logits.npz"
    return out
