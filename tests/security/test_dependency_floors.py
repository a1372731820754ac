"""Dependencies with known security holes below a version are pinned above it, and installed so.
The floors are the project's (issue 4, S5); the history behind them, for example:

- torch: `torch.load` deserialisation flaws, including with weights_only=True (CVE-2025-32434,
  fixed in 2.6). The service loads only its own checkpoints, with weights_only=True; the floor
  keeps the loader that this relies on.
- python-multipart: parser denial of service on crafted headers and boundaries (CVE-2024-24762,
  fixed in 0.0.7; CVE-2024-53981, fixed in 0.0.18). api/uploads.py drives its push parser directly.
"""

from __future__ import annotations

import re
from importlib.metadata import version

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from harness.services import ROOT

FLOORS = {"torch": "2.10", "python-multipart": "0.0.27"}


def _pins() -> dict[str, Requirement]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            pins[re.sub(r"[-_.]+", "-", req.name).lower()] = req
    return pins


@pytest.mark.parametrize("package, floor", FLOORS.items())
def test_requirements_pin_at_or_above_the_floor(package, floor):
    req = _pins().get(package)
    assert req is not None, f"{package} is not pinned in requirements.txt"
    exact = [s for s in req.specifier if s.operator == "=="]
    assert exact, f"{package} must be pinned exactly (==), found {req.specifier}"
    pinned = Version(exact[0].version)
    assert pinned >= Version(floor), f"requirements.txt pins {package}=={pinned}, below the safe floor {floor}"


@pytest.mark.parametrize("package, floor", FLOORS.items())
def test_installed_version_is_at_or_above_the_floor(package, floor):
    installed = Version(version(package))  # a local build tag (2.13.0+cpu) compares by its release
    assert installed.release >= Version(floor).release, (
        f"{package} {installed} is installed, below the safe floor {floor}")


def test_installed_versions_are_the_pinned_ones():
    for package in FLOORS:
        req = _pins()[package]
        pinned = Version(next(s.version for s in req.specifier if s.operator == "=="))
        assert Version(version(package)).release == pinned.release, package
