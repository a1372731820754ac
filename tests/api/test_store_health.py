"""/readyz checks the artifact store too: the S3 bucket answers (HEAD bucket) or the directory is writable."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.app import create_app
from jobs.settings import Settings
from tests.utils import API_KEY, S3_CREDENTIALS


def _ready(cfg: Settings):
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        return c.get("/readyz")


def _cfg(clean_pg, redis_url, tmp_path, **store) -> Settings:
    return Settings(database_url=clean_pg, broker_url=redis_url, data_dir=tmp_path / "data", bootstrap_api_key=API_KEY,
                    **{k.removeprefix("KD_").lower(): v for k, v in store.items()})


def test_readyz_is_ready_on_a_reachable_bucket(clean_pg, redis_url, tmp_path, s3_env):
    resp = _ready(_cfg(clean_pg, redis_url, tmp_path, **s3_env))
    assert resp.status_code == 200 and resp.json()["checks"]["artifact_store"] == "ok"


def test_readyz_reports_a_missing_bucket_and_an_unreachable_server(clean_pg, redis_url, tmp_path, s3_server):
    missing = _cfg(clean_pg, redis_url, tmp_path, KD_ARTIFACT_URL="s3://kd-no-such-bucket/x",
                   KD_S3_ENDPOINT_URL=s3_server, **S3_CREDENTIALS)
    resp = _ready(missing)
    assert resp.status_code == 503 and resp.json()["checks"]["artifact_store"] == "unreachable: ClientError"
    down = missing.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:1"})
    resp = _ready(down)
    assert resp.status_code == 503 and resp.json()["checks"]["artifact_store"].startswith("unreachable")


def test_readyz_reports_an_unwritable_directory(clean_pg, redis_url, tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    resp = _ready(_cfg(clean_pg, redis_url, tmp_path, KD_ARTIFACT_DIR=str(blocked / "artifacts")))
    assert resp.status_code == 503 and resp.json()["checks"]["artifact_store"].startswith("unreachable")
