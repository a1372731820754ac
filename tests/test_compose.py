"""Static checks of docker-compose.yml, Dockerfile and .dockerignore (no Docker engine runs in CI).

They hold the deployment files to the code: every `python -m X` names a module of this repository
and the image contains it, every KD_ variable is a field of jobs.settings.Settings and the
production environment passes Settings' own validation, the worker reserves a GPU, and the API
starts only after the migration has succeeded. Artifacts are in the MinIO service (S3): api and
worker share no volume, the bucket they name is the one the one-shot minio-init creates.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.artifact_store import make_store
from jobs.artifact_store.s3 import S3ArtifactStore
from jobs.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

SERVICES = {"postgres", "redis", "minio", "minio-init", "migrate", "api", "worker"}
OUR_SERVICES = {"migrate": "jobs.admin", "api": "api", "worker": "worker"}
SETTINGS_VARS = {f"KD_{name.upper()}" for name in Settings.model_fields}
# Read by compose on the host while it interpolates the file; never a container's environment.
HOST_ONLY_VARS = {"KD_POSTGRES_PASSWORD"}
# jobs.migrate finds the Alembic scripts next to the jobs package, so the image needs them too.
EXTRA_IN_IMAGE = {"migrations"}
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
KD_NAME = re.compile(r"^KD_[A-Z0-9_]+$")
# What the operator exports on the host (docs/PRODUCTION.md), for the checks that interpolate.
HOST = {"KD_POSTGRES_PASSWORD": "pw", "KD_BOOTSTRAP_API_KEY": "kd_" + "k" * 40, "KD_S3_ACCESS_KEY_ID": "kdadmin",
        "KD_S3_SECRET_ACCESS_KEY": "s" * 40}


# ---- helpers ----

def compose() -> dict:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def services() -> dict:
    return compose()["services"]


def argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def python_module(args: list[str]) -> str | None:
    """X of `python -m X ...`, else None."""
    if args and Path(args[0]).name.startswith("python") and "-m" in args[:-1]:
        return args[args.index("-m") + 1]
    return None


def module_in_repo(name: str) -> bool:
    """`python -m name` can run from the repository root: a package with __main__.py or a module
    file, inside packages (each with __init__.py) of this repository."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        if not (ROOT.joinpath(*parts[:i]) / "__init__.py").is_file():
            return False
    path = ROOT.joinpath(*parts)
    return (path / "__main__.py").is_file() or path.with_suffix(".py").is_file()


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def env_keys_anywhere(node) -> set[str]:
    """Every KD_ name set in the file: mapping keys and `KD_X=...` list items, extensions included."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and KD_NAME.match(key):
                found.add(key)
            found |= env_keys_anywhere(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str) and KD_NAME.match(item.split("=", 1)[0]):
                found.add(item.split("=", 1)[0])
            found |= env_keys_anywhere(item)
    return found


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's `${X}`, `${X:-default}`, `${X:?error}` against `values` (the host's variables)."""
    def one(m: re.Match) -> str:
        name, op, arg = m["name"], m["op"] or "", m["arg"] or ""
        if name in values and (values[name] or ":" not in op):
            return arg if op.endswith("+") else values[name]
        if op.endswith("?"):
            raise AssertionError(f"{name} is required: {arg}")
        return arg if op.endswith("-") else ""
    return INTERPOLATION.sub(one, text)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full, pending = (pending + line).strip(), ""
        if full and not full.startswith("#"):
            keyword, _, rest = full.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def exec_form(arguments: str) -> list[str]:
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def image_copies() -> list[tuple[str, str]]:
    """(source in the build context, path it has in the image) for each COPY/ADD from the context.
    A directory copied to `dest` becomes `dest` (its contents, not the directory, land there)."""
    copies, workdir = [], "/"
    for keyword, rest in dockerfile_instructions():
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, rest)
        if keyword not in ("COPY", "ADD"):
            continue
        tokens = exec_form(rest)
        flags = [t for t in tokens if t.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue
        *sources, dest = [t for t in tokens if not t.startswith("--")]
        target = posixpath.normpath(posixpath.join(workdir, dest))
        for src in sources:
            src = posixpath.normpath(src)
            is_dir = (ROOT / src).is_dir()
            into_dir = dest.endswith("/") or dest in (".", "..") or len(sources) > 1
            in_image = target if is_dir or not into_dir else posixpath.join(target, posixpath.basename(src))
            copies.append((src, in_image))
    return copies


def workdir() -> str:
    result = "/"
    for keyword, rest in dockerfile_instructions():
        if keyword == "WORKDIR":
            result = posixpath.join(result, rest)
    return result


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [p.strip().strip("/") for p in lines if p.strip() and not p.strip().startswith(("#", "!"))]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(prefix, pat) for prefix in prefixes for pat in patterns)


def modules_run_by_compose() -> dict[str, str]:
    found = {}
    for name, service in services().items():
        if "command" in service:
            module = python_module(argv(service["command"]))
            if module:
                found[name] = module
    return found


# ---- docker-compose.yml ----

def test_compose_has_its_services_and_no_version_key():
    data = compose()
    assert SERVICES <= set(data["services"]), f"missing: {sorted(SERVICES - set(data['services']))}"
    assert "version" not in data, "the compose spec has no `version:` key"


def test_our_services_run_the_expected_python_modules():
    found = modules_run_by_compose()
    assert {name: found.get(name) for name in OUR_SERVICES} == OUR_SERVICES


def test_every_python_m_command_names_a_module_of_the_repo():
    modules = modules_run_by_compose()
    assert modules, "no service runs `python -m ...`"
    missing = {svc: mod for svc, mod in modules.items() if not module_in_repo(mod)}
    assert not missing, f"`python -m` of modules not in the repository: {missing}"


def test_the_migrate_service_runs_a_real_admin_subcommand():
    args = argv(services()["migrate"]["command"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
    # --help after the subcommand: argparse exits 0 for a known one, 2 for an unknown one.
    proc = subprocess.run([sys.executable, *args[1:], "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert args[args.index("-m") + 2:] == ["migrate"]


def test_every_kd_variable_set_is_a_settings_field():
    names = env_keys_anywhere(compose())
    assert {"KD_MODE", "KD_DATABASE_URL", "KD_BROKER_URL", "KD_DATA_DIR", "KD_ARTIFACT_URL", "KD_S3_ENDPOINT_URL",
            "KD_S3_ACCESS_KEY_ID", "KD_S3_SECRET_ACCESS_KEY", "KD_BOOTSTRAP_API_KEY"} <= names
    unknown = names - SETTINGS_VARS
    assert not unknown, f"not fields of jobs.settings.Settings: {sorted(unknown)}"


def test_interpolated_kd_variables_are_settings_fields_or_host_only_and_required():
    for m in INTERPOLATION.finditer(COMPOSE.read_text()):
        if m["name"].startswith("KD_"):
            assert m["name"] in SETTINGS_VARS | HOST_ONLY_VARS, f"unknown variable {m['name']}"
            assert m["op"] == ":?", f"${{{m['name']}}} should fail fast when unset (use :?)"


@pytest.mark.parametrize("name", sorted(OUR_SERVICES))
def test_the_environment_passes_production_settings_validation(name, monkeypatch):
    env = {k: interpolate(v, HOST) for k, v in environment(services()[name]).items()}
    for key in [k for k in os.environ if k.startswith("KD_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # production mode refuses SQLite, embedded brokers and short keys
    assert settings.mode == "production"
    assert settings.db_url.startswith("postgresql")
    store = make_store(settings)  # builds the boto3 client; nothing is contacted
    assert isinstance(store, S3ArtifactStore) and store.client.meta.endpoint_url == "http://minio:9000"


def test_the_api_listens_on_all_interfaces_and_publishes_its_port():
    api = services()["api"]
    assert environment(api).get("KD_API_HOST") == "0.0.0.0"
    port = int(environment(api).get("KD_API_PORT", Settings.model_fields["api_port"].default))
    assert any(str(p).split(":")[-1] == str(port) for p in api.get("ports", []))


def test_the_worker_reserves_a_gpu():
    devices = (services()["worker"].get("deploy", {}).get("resources", {})
               .get("reservations", {}).get("devices", []))
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
               and (d.get("count") or d.get("device_ids")) for d in devices), devices


@pytest.mark.parametrize("name", ["api", "worker"])
def test_api_and_worker_wait_for_a_successful_migration(name):
    depends = services()[name].get("depends_on", {})
    assert isinstance(depends, dict), "use the long depends_on form with conditions"
    assert depends.get("migrate", {}).get("condition") == "service_completed_successfully"
    assert depends.get("redis", {}).get("condition") == "service_healthy"


def test_migrate_is_one_shot_after_postgres_is_healthy():
    migrate = services()["migrate"]
    assert migrate.get("restart") == "no", "quote it: a bare `no` is YAML false"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_postgres_and_redis_have_healthchecks():
    for name in ("postgres", "redis"):
        assert services()[name].get("healthcheck", {}).get("test"), name


def test_api_and_worker_share_no_volume_only_the_minio_store():
    data = compose()
    api, worker = services()["api"], services()["worker"]
    for name, service in (("api", api), ("worker", worker)):
        env = environment(service)
        assert "KD_ARTIFACT_DIR" not in env, f"{name} still uses a directory store"
        assert env["KD_ARTIFACT_URL"].startswith("s3://") and env["KD_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["KD_S3_ADDRESSING_STYLE"] == "path", "MinIO serves buckets by path, not by host name"
        assert service["depends_on"].get("minio-init", {}).get("condition") == "service_completed_successfully"
    assert not worker.get("volumes"), "each worker replica has its own /data (the image's anonymous volume)"
    sources = lambda svc: {str(v).split(":")[0] for v in svc.get("volumes", [])}
    assert not sources(api) & sources(worker)
    assert all(src in (data.get("volumes") or {}) for src in sources(api)), "the api's volume is not named"


def test_minio_serves_the_bucket_that_minio_init_creates_with_the_same_credentials():
    minio, init = services()["minio"], services()["minio-init"]
    assert ":" in minio["image"] and not minio["image"].endswith(":latest"), "pin the MinIO release"
    assert ":" in init["image"] and not init["image"].endswith(":latest"), "pin the mc release"
    assert argv(minio["command"])[:2] == ["server", "/data"] and any(
        str(v).split(":")[1] == "/data" for v in minio.get("volumes", [])), "MinIO's data is on a volume"
    assert minio.get("healthcheck", {}).get("test")
    assert init["depends_on"]["minio"]["condition"] == "service_healthy" and init.get("restart") == "no"
    bucket, _ = Settings(artifact_url=interpolate(environment(services()["api"])["KD_ARTIFACT_URL"], HOST)
                         ).artifact_bucket_and_prefix
    script = init["command"] if isinstance(init["command"], str) else " ".join(init["command"])
    assert f"mc mb --ignore-existing kd/{bucket}" in script and "http://minio:9000" in script
    # The root user MinIO starts with is the key pair api and workers present.
    root = {k: interpolate(v, HOST) for k, v in environment(minio).items()}
    ours = {k: interpolate(v, HOST) for k, v in environment(services()["worker"]).items()}
    assert (root["MINIO_ROOT_USER"], root["MINIO_ROOT_PASSWORD"]) == (
        ours["KD_S3_ACCESS_KEY_ID"], ours["KD_S3_SECRET_ACCESS_KEY"])
    init_env = {k: interpolate(v, HOST) for k, v in environment(init).items()}
    assert (init_env["MINIO_USER"], init_env["MINIO_PASSWORD"]) == (root["MINIO_ROOT_USER"], root["MINIO_ROOT_PASSWORD"])
    assert "$$MINIO_USER" in COMPOSE.read_text(), "escape $ so compose leaves it to the container's shell"


def test_the_worker_service_scales():
    replicas = services()["worker"]["deploy"]["replicas"]
    assert int(interpolate(str(replicas), {})) == 1 and int(interpolate(str(replicas), {"WORKER_REPLICAS": "4"})) == 4


# ---- Dockerfile and .dockerignore ----

def test_the_image_contains_every_package_the_commands_run():
    cmd = [exec_form(rest) for keyword, rest in dockerfile_instructions() if keyword == "CMD"]
    assert cmd, "the Dockerfile has no CMD"
    default = python_module(cmd[-1])
    assert default == "api" and module_in_repo(default), cmd[-1]
    needed = {m.split(".")[0] for m in modules_run_by_compose().values()} | {default} | EXTRA_IN_IMAGE
    in_image = {path for _, path in image_copies()}
    missing = {pkg for pkg in needed if posixpath.join(workdir(), pkg) not in in_image}
    assert not missing, f"not copied to {workdir()}/<name> in the image: {sorted(missing)}"


def test_every_copied_path_exists_and_is_not_dockerignored():
    copies = image_copies()
    assert copies
    patterns = dockerignore_patterns()
    for src, _ in copies:
        assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"
        assert not ignored(src, patterns), f"COPY {src}: excluded by .dockerignore"


def test_requirements_are_installed_before_the_code_is_copied():
    steps = dockerfile_instructions()
    copy_req = next(i for i, (k, r) in enumerate(steps) if k == "COPY" and "requirements.txt" in r)
    install = next(i for i, (k, r) in enumerate(steps) if k == "RUN" and "-r requirements.txt" in r)
    first_code = min(i for i, (k, r) in enumerate(steps) if k == "COPY" and "requirements.txt" not in r)
    assert copy_req < install < first_code


def test_the_image_runs_as_a_non_root_user_with_a_data_volume():
    steps = dockerfile_instructions()
    users = [r for k, r in steps if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(k == "ENV" and "KD_DATA_DIR=/data" in r for k, r in steps)
    assert any(k == "VOLUME" and "/data" in r for k, r in steps)
    assert steps[0][0] in ("FROM", "ARG") and any(k == "FROM" and "python:3.11-slim" in r for k, r in steps)


def test_the_healthcheck_probes_a_route_the_api_serves():
    checks = [r for k, r in dockerfile_instructions() if k == "HEALTHCHECK"]
    assert checks and "/healthz" in checks[-1]
    routes = "".join(p.read_text() for p in (ROOT / "api").rglob("*.py"))
    assert '"/healthz"' in routes


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    patterns = dockerignore_patterns()
    for path in (".venv", "var", "tests/artifacts", ".git", "api/__pycache__", "__pycache__"):
        assert ignored(path, patterns), f"{path} is sent to the Docker daemon"
