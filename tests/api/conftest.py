"""Fixtures of the API tests."""

from __future__ import annotations

import pytest

from tests.utils import upload


@pytest.fixture
def teacher_id(client, digits_teacher) -> str:
    return upload(client, digits_teacher[0], "teacher").json()["id"]
