"""An API process warms up and freezes what it made at start-up (api/app.py:warm_up_and_freeze): the
garbage collector's full collections walked the imports' ~400 000 objects, 60-125 ms with every request
of the process waiting (bench/RESULTS.md, B4 at night). Timings are the benchmark's; here, what makes them."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

from fastapi.testclient import TestClient

from api.app import create_app
from harness.services import ROOT

FIRST_USE = """
import gc, json, sys
from fastapi.testclient import TestClient
from api.app import create_app
from jobs.settings import Settings
with TestClient(create_app(Settings(database_url=sys.argv[1], broker_url=sys.argv[2], data_dir=sys.argv[3]))):
    print(json.dumps({"dynamo": "torch._dynamo" in sys.modules, "frozen": gc.get_freeze_count(),
                      "tracked": len(gc.get_objects())}))
"""


def test_a_new_process_is_warm_and_frozen_when_it_starts_serving(settings, tmp_path):
    """In a fresh interpreter: the student check's imports (torch._dynamo and sympy, through the forward
    pass on the meta device) are made before the first request, and the collector tracks next to nothing
    outside the permanent generation."""
    done = subprocess.run([sys.executable, "-c", FIRST_USE, settings.database_url, settings.broker_url,
                           str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["dynamo"], seen  # the first submission's imports are done
    assert seen["frozen"] > 100_000 and seen["tracked"] < seen["frozen"] / 10, seen


def test_the_shutdown_unfreezes(settings):
    """A process that builds several apps (this one) does not keep the cycles of those it dropped."""
    gc.unfreeze()
    with TestClient(create_app(settings)):
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
