"""Fixtures of the client tests: a kdclient.Client on the in-process API (FastAPI TestClient on the real
PostgreSQL and Redis of tests/conftest.py), an uploaded teacher, and a FakeService
(tests/client/fake_service.py) that records the requests a command sends (for fields the server may
not accept yet)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kdclient import Client, cli
from tests.client.fake_service import FEW_LABELS_RESULT, FakeService
from tests.utils import API_KEY


@pytest.fixture
def kd(client) -> Client:
    """The client under test, sending through the in-process API's TestClient."""
    return Client(api_key=API_KEY, http_client=client, max_retries=0)


@pytest.fixture
def teacher(kd, digits_teacher):
    path, arch = digits_teacher
    return kd.upload_file(path, "teacher"), arch


@pytest.fixture
def fake_service() -> FakeService:
    return FakeService(job_result=FEW_LABELS_RESULT)


@pytest.fixture
def kd_cli(client, monkeypatch):
    """Run `kd ARGS...` against the in-process API; returns the CliRunner result."""
    monkeypatch.setattr(cli, "make_client",
                        lambda url, key: Client(api_key=API_KEY, http_client=client, max_retries=0))

    def run(*args: str):
        return CliRunner().invoke(cli.app, list(args))

    return run


@pytest.fixture
def kd_fake(fake_service, monkeypatch):
    """Run `kd ARGS...` against a FakeService that records each request."""
    monkeypatch.setattr(cli, "make_client", lambda url, key: fake_service.client())

    def run(*args: str):
        return CliRunner().invoke(cli.app, list(args))

    return run
