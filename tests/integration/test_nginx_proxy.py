"""nginx/nginx.conf, run by Debian's nginx in front of a real Haven API (uvicorn on loopback).

The template is rendered the way the nginx image renders it (only ${NGINX_HAVEN_*} replaced),
with the temp folders moved into the test's directory so that nginx needs no system paths.

The API answers chats through a real llm service (the tiny GGUF, one slot), so a streamed
chat goes through nginx exactly as in production.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from api.settings import ApiSettings
from haven.db.engine import make_engine, make_session_factory
from tests.fixtures.api import bootstrap_platform_admin
from tests.fixtures.llm_service import Service, tiny_service
from tests.fixtures.nginx import NGINX, NGINX_TEMPLATE, render_nginx_conf
from tests.fixtures.services import free_port, wait_http
from tests.fixtures.sse import events_of
from tests.fixtures.tiny_gguf import build_tiny_gguf

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "stack" / "smoke.sh"
HEALTHCHECK = ROOT / "stack" / "healthcheck.py"

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="Debian's nginx is not installed: run stack/ci-system-deps.sh"
)


@dataclass
class Proxied:
    api_url: str
    url: str
    access_log: Path
    api: ApiSettings

    def log_lines(self) -> list[dict[str, Any]]:
        lines = self.access_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def log_line_for(self, uri: str) -> dict[str, Any]:
        # nginx logs a request once it is finished with it, which can be just after the answer.
        deadline = time.monotonic() + 5
        while not (found := [line for line in self.log_lines() if line["uri"] == uri]):
            assert time.monotonic() < deadline, f"no access log line for {uri}"
            time.sleep(0.05)
        return found[-1]


@pytest.fixture(scope="module")
def llm(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    model = build_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf"))
    with tiny_service(s3_endpoint, tmp_path_factory.mktemp("llm"), model, llm_slots=1) as service:
        yield service


@pytest.fixture()
def nginx_port() -> int:
    return free_port()


@pytest.fixture()
def api_server(
    store_overrides: dict[str, Any], llm: Service, nginx_port: int
) -> Iterator[tuple[str, ApiSettings]]:
    settings = ApiSettings(
        **store_overrides,
        llm_url=llm.url,
        chat_heartbeat_seconds=0.3,
        # The streamed-chat test asks for a 3,000-token answer; the operator's cap allows it.
        chat_max_answer_tokens=4000,
        # Presigned URLs go through the proxy below, as in the deployments.
        s3_public_url=f"http://127.0.0.1:{nginx_port}/objects",
    )
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, ws="none", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}", settings
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture()
def proxied(
    api_server: tuple[str, ApiSettings], nginx_port: int, s3_endpoint: str, tmp_path: Path
) -> Iterator[Proxied]:
    assert NGINX is not None
    api_url, settings = api_server
    port = nginx_port
    temp_dir = tmp_path / "nginx-temp"
    temp_dir.mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        render_nginx_conf(
            f"127.0.0.1:{port}", api_url.removeprefix("http://"), s3_endpoint, temp_dir
        )
    )
    access_log, error_log = tmp_path / "access.log", tmp_path / "error.log"
    argv = [NGINX, "-p", str(tmp_path), "-c", str(conf), "-e", "stderr"]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    with access_log.open("wb") as out, error_log.open("wb") as err:
        proc = subprocess.Popen(
            [*argv, "-g", f"daemon off; pid {tmp_path / 'nginx.pid'};"], stdout=out, stderr=err
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/nginx-health", proc=proc)
        yield Proxied(api_url, f"http://127.0.0.1:{port}", access_log, settings)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.returncode not in (0, -15):
            pytest.fail(f"nginx exited with {proc.returncode}: {error_log.read_text()}")


def test_api_paths_arrive_unchanged_with_their_request_id(proxied: Proxied) -> None:
    direct = httpx.get(f"{proxied.api_url}/api/version")
    through = httpx.get(f"{proxied.url}/api/version", headers={"X-Request-ID": "smoke-42"})
    assert through.status_code == 200
    assert through.json() == direct.json()  # /api kept: the API has no /version route
    assert through.headers["X-Request-ID"] == "smoke-42"
    assert through.headers["X-Accel-Buffering"] == "no"

    # Without an id, nginx makes one, logs it, and the API receives (and echoes) that one.
    me = httpx.get(f"{proxied.url}/api/v1/me")
    assert me.status_code == 401  # the API's answer: nginx has no notion of tokens
    made = me.headers.get_list("X-Request-ID")
    assert len(made) == 1 and re.fullmatch(r"[0-9a-f]{32}", made[0])
    line = proxied.log_line_for("/api/v1/me")
    assert line["request_id"] == made[0]
    assert line["upstream"] == proxied.api_url.removeprefix("http://")

    # /v1/ goes to the API as well (prefix kept); anything else is nginx's own 404.
    httpx.get(f"{proxied.url}/v1/models")
    assert proxied.log_line_for("/v1/models")["upstream"] == line["upstream"]
    other = httpx.get(f"{proxied.url}/elsewhere")
    assert other.status_code == 404
    assert proxied.log_line_for("/elsewhere")["upstream"] == ""
    # The metrics stay internal: Prometheus scrapes the services directly.
    assert httpx.get(f"{proxied.url}/metrics").status_code == 404


def test_presigned_uploads_and_downloads_go_through_nginx(proxied: Proxied) -> None:
    headers = {"Authorization": f"Bearer {_admin_token(proxied)}"}
    info = httpx.post(
        f"{proxied.url}/api/v1/documents/uploads",
        json={"filename": "page.html", "title": "page"},
        headers=headers,
    ).json()
    # Signed for the address the client used to reach Haven, and sent there.
    assert info["url"] == f"{proxied.url}/objects/{proxied.api.s3_bucket}"
    page = b"<html><body><script>alert(1)</script>uploaded page</body></html>"
    sent = httpx.post(info["url"], data=info["fields"], files={"file": ("page.html", page)})
    assert sent.status_code < 300, sent.text
    line = proxied.log_line_for(f"/objects/{proxied.api.s3_bucket}")
    assert line["upstream"] != proxied.api_url.removeprefix("http://")  # the store, not the API

    done = httpx.post(
        f"{proxied.url}/api/v1/documents/uploads/{info['upload_id']}/complete", headers=headers
    )
    assert done.status_code == 201, done.text
    document_id = done.json()["document"]["id"]
    link = httpx.get(
        f"{proxied.url}/api/v1/documents/{document_id}/download", headers=headers
    ).json()
    assert link["url"].startswith(f"{proxied.url}/objects/")
    got = httpx.get(link["url"])
    assert got.status_code == 200
    assert got.content == page
    # Never shown inline: a download, of a type no browser renders, and no sniffing.
    assert got.headers["content-disposition"].startswith('attachment; filename="page.html"')
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["x-content-type-options"] == "nosniff"


def _client_max_body_size() -> int:
    match = re.search(r"client_max_body_size\s+(\d+)m;", NGINX_TEMPLATE.read_text())
    assert match
    return int(match.group(1)) * 2**20


def test_a_body_over_the_limit_gets_413_from_nginx(proxied: Proxied) -> None:
    limit = _client_max_body_size()
    port = int(proxied.url.rsplit(":", 1)[1])
    # nginx judges the declared length before reading the body, as for any real client.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/auth/token HTTP/1.1\r\nHost: haven\r\n"
            b"Content-Type: application/octet-stream\r\n"
            + f"Content-Length: {limit + 1}\r\n\r\n".encode()
            + b"x" * 4096
        )
        head = sock.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413"), head
    assert re.search(r"(?im)^x-request-id: [0-9a-f]{32}\r$", head), head
    assert proxied.log_line_for("/api/v1/auth/token")["upstream"] == ""

    # A body within the limit reaches the API, which judges it (bad credentials: 4xx JSON).
    small = httpx.post(
        f"{proxied.url}/api/v1/auth/token", data={"username": "nobody", "password": "x" * 20}
    )
    assert small.status_code in (400, 401, 422)
    assert "detail" in small.json()


def _admin_token(proxied: Proxied) -> str:
    engine = make_engine(proxied.api)
    factory: sessionmaker[Session] = make_session_factory(engine)
    try:
        with httpx.Client(base_url=proxied.url) as client:
            account = bootstrap_platform_admin(factory, client)  # type: ignore[arg-type]
    finally:
        engine.dispose()
    return account.token


def test_a_streamed_chat_arrives_event_by_event_through_nginx(
    proxied: Proxied, llm: Service
) -> None:
    headers = {"Authorization": f"Bearer {_admin_token(proxied)}"}
    chat = httpx.post(f"{proxied.url}/api/v1/chats", json={}, headers=headers)
    assert chat.status_code == 201, chat.text
    url = f"{proxied.url}/api/v1/chats/{chat.json()['id']}/messages"
    # The only llm slot is busy, so the answer's stream starts (meta) and then waits: what
    # the client receives meanwhile can only have come through unbuffered.
    hold = {"messages": [{"role": "user", "content": "hold"}], "max_tokens": 12000, "stream": True}
    with httpx.stream("POST", f"{llm.url}/v1/chat/completions", json=hold, timeout=30) as busy:
        busy_lines = busy.iter_lines()  # held: dropping a half-read iterator closes it
        next(busy_lines)
        body = {"content": "Hello through the proxy", "rag": False, "max_tokens": 3000}
        with httpx.stream(
            "POST", url, json=body, headers=headers, timeout=httpx.Timeout(30, read=20)
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = events_of(response)
            first = next(events)
            assert first.name == "meta" and first.data["sources"] == []
            # The answer waits for the slot: no token of it exists yet.
            llm.wait_until(lambda: llm.info()["waiting"] == 1, "the answer queued")
            # The heartbeat comment passes through too while the answer waits.
            assert next(events).name == "heartbeat"
            busy.close()  # frees the slot
            while next(events).name != "token":
                pass
            # The first token is here while the answer is still being generated.
            assert llm.info()["active_slots"] == 1
            rest = [e for e in events if e.name != "heartbeat"]
    assert {e.name for e in rest[:-1]} == {"token"} and rest[-1].name == "done"
    assert rest[-1].data["usage"]["completion_tokens"] == 3000
    assert proxied.log_line_for(url.removeprefix(proxied.url))["status"] == 200


def test_the_smoke_suite_stops_at_a_bad_token_through_nginx(proxied: Proxied) -> None:
    # The whole suite passing is shown against the README's `haven up` (tests/e2e); here the
    # API has no worker behind it, so only the steps before any ingest can be shown.
    bad = subprocess.run(
        ["bash", str(SMOKE), f"{proxied.url}/", "not-a-token"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert "ok   3. version /api/version" in bad.stdout
    assert "FAIL 4. token accepted /api/v1/me: HTTP 401" in bad.stdout


def test_the_container_health_check_tells_up_from_down(proxied: Proxied) -> None:
    def check(*args: str) -> int:
        argv = [sys.executable, str(HEALTHCHECK), *args]
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode

    assert check("http", f"{proxied.api_url}/healthz") == 0
    assert check("http", f"{proxied.url}/elsewhere") == 1  # 404
    assert check("http", f"http://127.0.0.1:{free_port()}/healthz") == 1  # nothing listening
