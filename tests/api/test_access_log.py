"""KD_API_ACCESS_LOG: `python -m api` writes uvicorn's line per request by default, none when it is false
(errors and start-up lines either way)."""

from __future__ import annotations

import pytest

from harness.services import wait_until

pytestmark = pytest.mark.slow
LINE = '"GET /healthz?from=access-log-test HTTP/1.1" 200'


@pytest.mark.parametrize("setting, logged", [(None, True), ("false", False), ("true", True)])
def test_the_access_log_follows_the_setting(live_stack, setting, logged):
    env = {} if setting is None else {"KD_API_ACCESS_LOG": setting}
    stack = live_stack(workers=0, KD_API_WORKERS="2", **env)
    client = stack.client()
    assert client.get("/healthz?from=access-log-test").status_code == 200
    assert client.get("/v1/jobs/job_missing").status_code == 404
    if logged:
        wait_until(lambda: LINE in stack.api.output(), timeout=10, what="the access log line")
    else:
        stack.stop()  # every line the processes wrote is in the log now
        output = stack.api.log_path.read_text(errors="replace")
        assert "Application startup complete" in output  # the log itself is on
        assert "HTTP/1.1" not in output
