"""Analyses through the API without a worker: what a request is refused with, who may do
what, the same request answered by the stored analysis, and stale analyses."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import transaction
from haven.db.tables import Chunk, DocumentVersion, Role
from tests.fixtures.analyses import mark_ready, upload_ready
from tests.fixtures.api import Account, create_user

SCHEMA = {
    "type": "object",
    "properties": {"deadlines": {"type": "array", "items": {"type": "string"}}},
    "required": ["deadlines"],
}


def _post(client: TestClient, who: Account, **body: Any) -> Any:
    return client.post("/api/v1/analyses", json=body, headers=who.headers)


def test_bad_requests_get_a_clear_4xx(
    api_client: TestClient,
    session_factory: sessionmaker[Session],
    tenant_a: Account,
    tenant_b: Account,
) -> None:
    ready = upload_ready(api_client, session_factory, tenant_a, b"The invoice is due on May 1.")
    doc = ready["document"]["id"]
    other = upload_ready(api_client, session_factory, tenant_b, b"Tenant B's own contract.")

    # Unknown or another tenant's document: 404, by id and by source id.
    for ids in ([str(uuid.uuid4())], [other["document"]["id"]]):
        assert _post(api_client, tenant_a, document_ids=ids, kind="summary").status_code == 404
    assert _post(api_client, tenant_a, source_ids=["nope"], kind="summary").status_code == 404

    # A document not ready yet: 409 with its state.
    queued = api_client.post(
        "/api/v1/documents",
        files={"file": ("q.txt", b"still queued for ingest", "text/plain")},
        headers=tenant_a.headers,
    ).json()
    busy = _post(api_client, tenant_a, document_ids=[queued["document"]["id"]], kind="summary")
    assert busy.status_code == 409, busy.text
    assert (busy.json()["code"], busy.json()["state"]) == ("document.not_ready", "queued")

    # Not a JSON Schema, a schema reaching outside itself, or none for extract: 422.
    for output in ({"type": "no-such-type"}, {"$ref": "http://example.org/s.json"}):
        bad = _post(api_client, tenant_a, document_ids=[doc], kind="extract", output=output)
        assert bad.status_code == 422, bad.text
        assert bad.json()["code"] == "analysis.schema"
    assert _post(api_client, tenant_a, document_ids=[doc], kind="extract").status_code == 422
    assert _post(api_client, tenant_a, document_ids=[doc], kind="custom").status_code == 422
    nul = _post(api_client, tenant_a, document_ids=[doc], kind="custom", instructions="a\x00b")
    assert nul.status_code == 422
    nul_schema = {"type": "object", "description": "a\x00b"}
    assert (
        _post(
            api_client, tenant_a, document_ids=[doc], kind="extract", output=nul_schema
        ).status_code
        == 422
    )
    assert _post(api_client, tenant_a, kind="summary").status_code == 422
    assert _post(api_client, tenant_a, document_ids=[doc], kind="poem").status_code == 422

    # More documents than the configured limit: 413 naming the limit.
    many = _post(api_client, tenant_a, document_ids=[doc] * 21, kind="summary")
    assert many.status_code == 413, many.text
    assert (many.json()["code"], many.json()["limit"]) == ("analysis.too_many_documents", 20)

    # More tokens than the configured limit (estimated from what ingest counted): 413.
    with transaction(session_factory) as session:
        version = session.execute(
            select(DocumentVersion).where(DocumentVersion.document_id == uuid.UUID(doc))
        ).scalar_one()
        session.add(
            Chunk(
                id=uuid.uuid4(),
                tenant_id=tenant_a.tenant_id,
                document_id=version.document_id,
                version_id=version.id,
                position=0,
                token_count=5000,
                text_sha256="0" * 64,
            )
        )
    settings = api_client.app.state.runtime.settings  # type: ignore[attr-defined]
    settings.analyze_max_input_tokens = 4000
    try:
        long = _post(api_client, tenant_a, document_ids=[doc], kind="summary")
    finally:
        settings.analyze_max_input_tokens = 2_000_000
    assert long.status_code == 413, long.text
    assert (long.json()["code"], long.json()["limit"]) == ("analysis.too_many_tokens", 4000)


def test_roles_reuse_and_stale(
    api_client: TestClient,
    session_factory: sessionmaker[Session],
    tenant_a: Account,
    tenant_b: Account,
) -> None:
    viewer = create_user(api_client, tenant_a, Role.VIEWER)
    editor = create_user(api_client, tenant_a, Role.EDITOR)
    first = upload_ready(
        api_client,
        session_factory,
        tenant_a,
        b"Policy v1: travel is booked by May.",
        source_id="policy",
    )
    doc = first["document"]["id"]

    assert _post(api_client, viewer, document_ids=[doc], kind="summary").status_code == 403
    created = _post(api_client, editor, source_ids=["policy"], kind="summary")
    assert created.status_code == 201, created.text
    analysis = created.json()
    assert (analysis["state"], analysis["progress"], analysis["stale"]) == (
        "queued",
        "queued",
        False,
    )
    assert analysis["sources"][0]["version"] == 1

    # The same request (by id this time) is the same analysis: nothing is generated again.
    again = _post(api_client, editor, document_ids=[doc], kind="summary")
    assert again.status_code == 200, again.text
    assert (again.json()["id"], again.json()["reused"]) == (analysis["id"], True)
    forced = _post(api_client, editor, document_ids=[doc], kind="summary", force=True)
    assert forced.status_code == 201 and forced.json()["id"] != analysis["id"]

    # Viewers read; another tenant does not see it; no artifact before it is ready.
    path = f"/api/v1/analyses/{analysis['id']}"
    assert api_client.get(path, headers=viewer.headers).json()["id"] == analysis["id"]
    listed = api_client.get("/api/v1/analyses", headers=viewer.headers).json()
    assert listed["total"] == 2
    assert api_client.get("/api/v1/analyses", headers=tenant_b.headers).json()["total"] == 0
    assert api_client.get(path, headers=tenant_b.headers).status_code == 404
    early = api_client.get(f"{path}/artifact", headers=viewer.headers)
    assert early.status_code == 409 and early.json()["code"] == "analysis.not_ready"
    assert api_client.delete(path, headers=viewer.headers).status_code == 403

    # A new version of the document makes the analysis stale; deleting it, too.
    second = api_client.post(
        "/api/v1/documents",
        files={"file": ("p.txt", b"Policy v2: travel is booked by June.", "text/plain")},
        data={"source_id": "policy"},
        headers=tenant_a.headers,
    ).json()
    mark_ready(session_factory, doc, second["version"])
    stale = api_client.get(path, headers=viewer.headers).json()
    assert stale["stale"] is True
    assert "serves version 2; version 1 was analysed" in stale["stale_reasons"][0]
    assert api_client.delete(f"/api/v1/documents/{doc}", headers=editor.headers).status_code == 204
    gone = api_client.get(path, headers=viewer.headers).json()
    assert gone["stale_reasons"] == [f"document {doc} was deleted"]

    # Deleting the analysis cancels its job and removes it.
    assert api_client.delete(path, headers=editor.headers).status_code == 204
    assert api_client.get(path, headers=editor.headers).status_code == 404
    job = api_client.get(f"/api/v1/jobs/{analysis['job']['id']}", headers=editor.headers).json()
    assert job["state"] == "canceled"
