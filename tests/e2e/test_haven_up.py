"""The README's run command: `haven up` starts every service, serves a sign-in, passes the
smoke suite, and stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from tests.fixtures.processes import ROOT
from tests.fixtures.services import TEST_BROKER_URL, TEST_REDIS_URL, create_database, free_port


def test_haven_up_runs_the_whole_stack_and_stops_it(s3_endpoint: str, tmp_path: Path) -> None:
    api, emb, llm = free_port(), free_port(), free_port()
    suffix = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "HAVEN_SECRETS_DIR": "/nonexistent-haven-secrets",
        "HAVEN_DATABASE_URL": create_database(f"haven_up_{suffix}"),
        "HAVEN_REDIS_URL": TEST_REDIS_URL,
        "HAVEN_BROKER_URL": TEST_BROKER_URL,
        "HAVEN_S3_ENDPOINT": s3_endpoint,
        "HAVEN_S3_BUCKET": f"up-{suffix}",
        "HAVEN_MODELS_BUCKET": f"up-models-{suffix}",
        "HAVEN_QDRANT_PATH": str(tmp_path / "qdrant"),
        "HAVEN_QDRANT_COLLECTION": f"up_{suffix}",
        "HAVEN_MODEL_CACHE_DIR": str(tmp_path / "models"),
        "HAVEN_ADMIN_PASSWORD": "first-start-password",
        "HAVEN_LOCAL_EMB_PORT": str(emb),
        "HAVEN_LOCAL_LLM_PORT": str(llm),
        "HAVEN_LLM_CTX": "1024",
        "HF_HUB_OFFLINE": "1",
    }
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "haven.cli", "up", "--api-port", str(api)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while b"Haven is up" not in (tmp_path / "up.log").read_bytes():
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "haven up did not come up in 10 minutes"
            time.sleep(1)
        output = (tmp_path / "up.log").read_text()
        assert "sign in as 'admin'" in output  # the first start says how to sign in
        for port in (api, emb, llm):
            assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
        token = httpx.post(
            f"http://127.0.0.1:{api}/api/v1/auth/token",
            data={"username": "admin", "password": "first-start-password"},
        ).json()["access_token"]
        me = httpx.get(
            f"http://127.0.0.1:{api}/api/v1/me", headers={"Authorization": f"Bearer {token}"}
        ).json()
        assert (me["tenant_slug"], me["role"]) == ("default", "admin")

        # The post-deploy smoke suite passes against it: ingest, kNN and hybrid search, and
        # a streamed answer from the bundled Gemma model.
        smoke = subprocess.run(
            ["bash", str(ROOT / "stack" / "smoke.sh"), f"http://127.0.0.1:{api}", token],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "SMOKE_TIMEOUT": "120"},
        )
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        assert "smoke: all 12 steps passed" in smoke.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        finally:
            log.close()
    assert proc.returncode == 0
    for port in (api, emb, llm):  # every service it started is gone
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        except httpx.ConnectError:
            continue
        raise AssertionError(f"a service still answers on :{port} after haven up stopped")
