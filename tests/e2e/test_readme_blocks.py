"""README.md's shell and Python blocks, run in order against a live service as a new user would, so
the README cannot drift from what the service does.

The service is started the way the README's quick start says: `make run` is `scripts/serve.py` (the
embedded mode: SQLite database and broker under `var/`, one API and one worker; it writes the key to
`var/api_key`), then `make demo` is `scripts/demo.py` (it leaves a teacher at `var/demo/`). Both run
here without make (whose first step is `pip install`) from a temporary directory that stands for the
checkout: it holds a link to the project's `.venv` and nothing else, so every file a block uses must
be made by the README itself. No KD_ variable of this machine reaches them.

Every ```sh, ```bash and ```python block runs, in README order, in one bash session (set -e, pipefail):
a Python block is written to a file and run with `python` as its turn comes. A block that is not meant
to be run here says so with `<!-- readme-test: skip (why) -->` on the line before it, so a new block
runs by default. The only substitution is the address: the blocks' `127.0.0.1:8000` becomes the free
port the service was started on (KD_API_PORT). A block fails the test when it exits non-zero, runs past
BLOCK_TIMEOUT, or prints a problem+json answer (`"status": 4xx/5xx`: `curl -s` exits 0 on those).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness.services import free_port, ROOT

README = ROOT / "README.md"
RUN_LANGUAGES = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python"}
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<why>.+)\)\s*-->")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
README_URL = "http://127.0.0.1:8000"
BLOCK_TIMEOUT = 300  # seconds; the longest block (the CLI's) trains four small jobs
PROBLEM = re.compile(r'"status":\s*[45]\d\d\b')


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip: str | None  # why it is not run, from its readme-test marker


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, with the readme-test marker of the line before it."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            i += 1
        if i == len(lines):
            raise AssertionError(f"README.md:{start + 1}: a code block that is never closed")
        marker = SKIP.search(lines[start - 1]) if start > 0 else None
        blocks.append(Block(start + 1, opening["lang"], "\n".join(lines[start + 1:i]) + "\n",
                            marker["why"] if marker else None))
        i += 1
    return blocks


def test_every_block_is_run_or_says_why_not():
    """Fast and without a service: each block has a language; each skip marker sits right above a block;
    the blocks the live test runs are the ones it is meant to (a parse error would silently run none)."""
    text = README.read_text()
    blocks = readme_blocks(text)
    for b in blocks:
        assert b.lang, f"README.md:{b.line}: a code block without a language (```sh, ```python, ```text, ...)"
    fence_lines = {b.line for b in blocks}
    for n, line in enumerate(text.splitlines(), 1):
        if "readme-test" in line:
            assert SKIP.search(line), f"README.md:{n}: write it as <!-- readme-test: skip (why) -->"
            assert n + 1 in fence_lines, f"README.md:{n}: a readme-test marker must be the line before a block"
    run = [b for b in blocks if b.lang in RUN_LANGUAGES and b.skip is None]
    assert len(run) >= 5, [b.line for b in run]  # the API walkthrough, resources, CLI, client, kdcore x2
    assert any("kd distill" in b.code for b in run) and any("Client()" in b.code for b in run)


def session_script(blocks: list[Block], work: Path, port: int) -> str:
    """One bash script that runs the runnable blocks in order, recording which one is running."""
    parts = ["set -eo pipefail"]
    for n, b in enumerate(blocks):
        code = b.code.replace(README_URL, f"http://127.0.0.1:{port}")
        parts.append(f"echo {n} > .readme-test/current")
        parts.append(f"echo '===== README.md:{b.line} ({b.lang}) ====='")
        if RUN_LANGUAGES[b.lang] == "python":
            path = work / ".readme-test" / f"block_{b.line}.py"
            path.write_text(code)
            parts.append(f"python {path.relative_to(work)}")
        else:
            parts.append(code)
    parts.append("echo done > .readme-test/current")
    return "\n".join(parts) + "\n"


def user_env(work: Path, **extra: str) -> dict[str, str]:
    """A new user's environment: this machine's, without any KD_ setting or virtual environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KD_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv_bin = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env.update(HOME=str(work), OMP_NUM_THREADS="1", **extra)  # one thread each: 2 shared cores
    return env


@pytest.fixture
def service(tmp_path):
    """`make run` (scripts/serve.py) in a directory standing for a fresh checkout, on a free port; then
    `make demo` (scripts/demo.py) once. Yields (working directory, port)."""
    work = tmp_path / "checkout"
    (work / ".readme-test").mkdir(parents=True)
    (work / ".venv").symlink_to(ROOT / ".venv")
    port = free_port()
    python = str(work / ".venv" / "bin" / "python")
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen([python, str(ROOT / "scripts" / "serve.py")], cwd=work, stdout=log,
                             stderr=subprocess.STDOUT, env=user_env(work, KD_API_PORT=str(port)),
                             start_new_session=True)

    def serve_log() -> str:
        log.flush()
        return (tmp_path / "serve.log").read_text(errors="replace")[-6000:]

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert serve.poll() is None and time.monotonic() < deadline, f"make run did not start:\n{serve_log()}"
            time.sleep(0.3)
        assert (work / "var" / "api_key").is_file(), "make run wrote no var/api_key"
        demo = subprocess.run([python, str(ROOT / "scripts" / "demo.py")], cwd=work, capture_output=True, text=True,
                              timeout=BLOCK_TIMEOUT, env=user_env(work, KD_URL=f"http://127.0.0.1:{port}"))
        assert demo.returncode == 0, f"make demo failed:\n{demo.stdout}\n{demo.stderr}\n{serve_log()}"
        assert (work / "var" / "demo" / "teacher.safetensors").is_file()
        yield work, port
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGINT)  # Ctrl-C, as the quick start says
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait()
        log.close()


def run_session(script: str, work: Path, blocks: list[Block]) -> str:
    """Run the session script; its output. Fails naming the block that exited non-zero or ran too long."""
    (work / ".readme-test" / "session.sh").write_text(script)
    out_path = work / ".readme-test" / "session.log"
    current = work / ".readme-test" / "current"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(["bash", ".readme-test/session.sh"], cwd=work, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=user_env(work), start_new_session=True)
        seen, since = None, time.monotonic()
        while proc.poll() is None:
            now = current.read_text().strip() if current.exists() else None
            if now != seen:
                seen, since = now, time.monotonic()
            if time.monotonic() - since > BLOCK_TIMEOUT:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.5)
    output = out_path.read_text(errors="replace")
    which = current.read_text().strip() if current.exists() else "0"
    if which != "done":
        block = blocks[int(which)]
        why = "ran past BLOCK_TIMEOUT" if proc.returncode in (-signal.SIGKILL,) else f"exited {proc.returncode}"
        raise AssertionError(f"README.md:{block.line} ({block.lang}) {why}:\n{block.code}\n--- output ---\n"
                             f"{output[-8000:]}")
    return output


@pytest.mark.slow
def test_readme_blocks_run_against_a_live_service(service):
    work, port = service
    blocks = [b for b in readme_blocks(README.read_text()) if b.lang in RUN_LANGUAGES and b.skip is None]
    output = run_session(session_script(blocks, work, port), work, blocks)
    problems = [line for line in output.splitlines() if PROBLEM.search(line)]
    assert not problems, "a block printed a problem answer:\n" + "\n".join(problems)
    # What the blocks say they leave behind.
    for name in ("student.safetensors", "student.onnx", "metrics.csv", "few-labels.onnx", "kd-example/out/summary.json"):
        assert (work / name).is_file() and (work / name).stat().st_size > 0, name
    assert (work / "metrics.csv").read_text().startswith("run,epoch,")
    # The resources block's claim: a cuda job nobody serves says why it waits.
    assert "no live worker serves device=cuda gpus=2 (queue kd.cuda.2)" in output
    # The CLI block's claim: the second `kd distill` reuses the teacher the first one uploaded.
    assert "reusing file_" in output and "(uploaded before: same sha256)" in output
