"""`make demo`: one distillation end to end over HTTP, against a running service (`make run`).

Trains a small teacher MLP on every label of scikit-learn digits' training split here (a few seconds
on CPU), uploads it, and submits the job distillation is for: a 16-unit MLP student that keeps only
10 labels per class (`dataset.labels_per_class`) and gets every other training row as an unlabelled
input for the teacher to label, with a from-scratch baseline (the same student on those 100 labels,
for the same number of optimizer steps). It follows the progress, downloads the student (checking
its sha256 against the ETag) and prints teacher, distilled student and baseline side by side.

    KD_URL      the service (default http://127.0.0.1:8000)
    KD_API_KEY  an API key (default: the key `make run` wrote to var/api_key)

It writes the teacher and the student under `{KD_DATA_DIR}/demo` (var/demo).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TEACHER = {"arch": "mlp", "arch_params": {"hidden_sizes": [256, 256]}}
JOB = {"student": {"arch": "mlp", "arch_params": {"hidden_sizes": [16]}},
       "dataset": {"builtin": "digits", "standardize": True, "labels_per_class": 10},
       "hyperparameters": {"epochs": 20, "temperature": 4.0, "alpha": 0.1, "learning_rate": 0.01},
       "baseline": True}
FINISHED = {"succeeded", "failed", "cancelled"}


class DemoError(Exception):
    """A problem to print as one line, without a traceback."""


def api_key() -> str:
    from jobs.settings import settings

    if os.environ.get("KD_API_KEY"):
        return os.environ["KD_API_KEY"]
    if settings.bootstrap_api_key is not None:  # make run used it instead of writing var/api_key
        return settings.bootstrap_api_key.get_secret_value()
    key_file = settings.data_dir / "api_key"
    if not key_file.is_file():
        raise DemoError(f"no API key: set KD_API_KEY, or start the service with make run (it writes {key_file})")
    return key_file.read_text().strip()


def checked(response: httpx.Response) -> httpx.Response:
    """The response if it succeeded; else DemoError with the problem+json `detail`."""
    if response.is_success:
        return response
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text[:300]
    raise DemoError(f"{response.request.method} {response.request.url.path}: {response.status_code} {detail}")


def train_teacher(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from kdcore.data import load_builtin
    from kdcore.models import build_model

    data = load_builtin("digits")  # the service's own split: the teacher never sees its test set
    train, test = data["train"], data["test"]
    torch.manual_seed(0)
    model = build_model(TEACHER["arch"], TEACHER["arch_params"], input_shape=(64,), num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    for _ in range(30):
        model.train()
        for idx in torch.randperm(train.num_samples).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(test.x).argmax(1) == test.y).float().mean().item()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    print(f"teacher: MLP 64-256-256-10 trained in {time.perf_counter() - started:.1f} s, "
          f"test accuracy {accuracy:.1%} -> {path}")


def progress_line(job: dict) -> str:
    p = job.get("progress") or {}
    epoch = f"epoch {p['epoch']}/{p['epochs']}" if p.get("epoch") is not None and p.get("epochs") else ""
    eta = f"ETA {p['eta_seconds']:.0f} s" if p.get("eta_seconds") is not None else ""
    return (f"{job['status']:<10} {p.get('phase') or '-':<16} {epoch:<13} "
            f"{100 * (p.get('fraction') or 0):5.1f}%  {eta}")


def follow(client: httpx.Client, job: dict) -> dict:
    """Poll every second until the job finishes; one line that rewrites itself (or a line per change)."""
    tty, last = sys.stdout.isatty(), None
    try:
        while job["status"] not in FINISHED:
            line = progress_line(job)
            if tty or line != last:
                print(f"\r{line:<72}" if tty else line, end="" if tty else "\n")
            last = line
            time.sleep(1)
            job = checked(client.get(f"/v1/jobs/{job['id']}")).json()
    except KeyboardInterrupt:
        raise DemoError(f"stopped following; job {job['id']} keeps running on the service "
                        f"(cancel it with POST /v1/jobs/{job['id']}/cancel)") from None
    print(f"\r{progress_line(job):<72}" if tty else progress_line(job))
    return job


def download_student(client: httpx.Client, job_id: str, path: Path) -> None:
    digest = hashlib.sha256()
    with client.stream("GET", f"/v1/jobs/{job_id}/student") as response:
        if not response.is_success:
            response.read()
            checked(response)
        etag = response.headers.get("etag", "").removeprefix("W/").strip('"')
        with path.open("wb") as f:
            for chunk in response.iter_bytes():
                f.write(chunk)
                digest.update(chunk)
    if digest.hexdigest() != etag:
        path.unlink()
        raise DemoError(f"the student's sha256 {digest.hexdigest()} does not match its ETag {etag!r}")
    print(f"student: {path} ({path.stat().st_size:,} bytes, sha256 matches the ETag)")


def fmt(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def report(result: dict, student_file: Path) -> None:
    teacher, student, baseline = (result.get(k) or {} for k in ("teacher", "student", "baseline"))
    gain = result.get("distillation_gain")
    print(f"\nevaluated on {result.get('evaluated_on', '?')} ({result.get('num_eval_samples', '?')} samples)")
    print(f"  {'':<36}{'accuracy':>9}{'parameters':>12}  {'trained on (labelled + unlabelled rows)':<40}")
    for name, run, params in (("teacher", teacher, teacher.get("parameters")),
                              ("student (distilled)", student, student.get("parameters")),
                              ("baseline (same student, no teacher)", baseline, student.get("parameters"))):
        rows = run.get("train_rows")
        trained = ("every training label" if name == "teacher" else
                   "-" if not rows else f"{rows['labeled']} + {rows['unlabeled']}, {run.get('steps', '?')} steps")
        print(f"  {name:<36}{fmt(run.get('accuracy'), '.1%'):>9}{fmt(params, ','):>12}  {trained:<40}")
    print(f"  compression {fmt(result.get('compression'), '.1f', 'x')}, speedup {fmt(result.get('speedup'), '.1f', 'x')}, "
          f"distillation gain {fmt(None if gain is None else 100 * gain, '+.1f', ' points')}, "
          f"student file {student_file.stat().st_size / 1024:.1f} KiB")


def main() -> int:
    from jobs.settings import settings

    sys.stdout.reconfigure(line_buffering=True)
    url = os.environ.get("KD_URL", "http://127.0.0.1:8000").rstrip("/")
    try:
        headers = {"Authorization": f"Bearer {api_key()}"}
        with httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(120, connect=5)) as client:
            checked(client.get("/healthz"))
            out = settings.data_dir / "demo"
            out.mkdir(parents=True, exist_ok=True)
            teacher_path = out / "teacher.safetensors"
            train_teacher(teacher_path)
            with teacher_path.open("rb") as f:
                upload = checked(client.post("/v1/files", data={"purpose": "teacher"},
                                             files={"file": (teacher_path.name, f, "application/octet-stream")}))
            file_id = upload.json()["id"]
            job = checked(client.post("/v1/jobs", json={"teacher": {"file_id": file_id, **TEACHER}, **JOB})).json()
            print(f"job {job['id']} submitted (teacher file {file_id}); following it, Ctrl-C stops following")
            job = follow(client, job)
            if job["status"] != "succeeded":
                error = job.get("error") or {}
                print(f"job {job['status']}: {error.get('code', '?')}: {error.get('message', 'no message')}")
                return 1
            student_path = out / "student.safetensors"
            download_student(client, job["id"], student_path)
            report(job["result"] or {}, student_path)
            return 0
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
    except httpx.TransportError as e:
        print(f"error: cannot reach {url} ({type(e).__name__}: {e}); is the service running? "
              "start it with make run", file=sys.stderr)
    except httpx.HTTPError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
