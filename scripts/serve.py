"""`make run`: the embedded service on one machine, nothing to install.

Migrates the SQLite database, makes sure an API key exists (kept in var/api_key, printed), then
starts the API (uvicorn) and one Celery worker on the SQLite broker transport. Ctrl-C stops both.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    from jobs.migrate import upgrade
    from jobs.settings import settings

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    # The API and the worker run from the checkout: give them the data directory as an absolute
    # path, so a relative KD_DATA_DIR (default `var`) means the same directory as here.
    env = {**os.environ, "KD_DATA_DIR": str(settings.data_dir.resolve())}
    key_file = settings.data_dir / "api_key"
    if settings.bootstrap_api_key is not None:
        key = settings.bootstrap_api_key.get_secret_value()
    else:
        if not key_file.exists():
            key_file.write_text("kd_" + secrets.token_urlsafe(32))
            key_file.chmod(0o600)
        key = key_file.read_text().strip()
        env["KD_BOOTSTRAP_API_KEY"] = key

    url = f"http://{settings.api_host}:{settings.api_port}"
    procs = [
        subprocess.Popen([sys.executable, "-m", "worker"], cwd=ROOT, env=env),
        subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env),
    ]
    print(f"\n  Distillation service: {url}   (docs: {url}/docs)\n"
          f"  API key:              {key}\n"
          f"  Try:                  curl -H 'Authorization: Bearer {key}' {url}/v1/jobs\n"
          f"  Ctrl-C stops the API and the worker.\n", flush=True)

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(p.poll() is None for p in procs):
        time.sleep(0.5)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
