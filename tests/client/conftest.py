"""Fixtures of the client tests: a kdclient.Client on the in-process API (FastAPI TestClient on the real
PostgreSQL and Redis of tests/conftest.py), and an uploaded teacher."""

from __future__ import annotations

import pytest

from kdclient import Client
from tests.conftest import API_KEY


@pytest.fixture
def kd(client) -> Client:
    """The client under test, sending through the in-process API's TestClient."""
    return Client(api_key=API_KEY, http_client=client, max_retries=0)


@pytest.fixture
def teacher(kd, digits_teacher):
    path, arch = digits_teacher
    return kd.upload_file(path, "teacher"), arch


def job_spec(teacher_id: str, arch: dict, **hyper) -> dict:
    return {"teacher": {"file_id": teacher_id, **arch},
            "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [16]}},
            "dataset": {"builtin": "digits"},
            "hyperparameters": {"epochs": 2, **hyper}}
