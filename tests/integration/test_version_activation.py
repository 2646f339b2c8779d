"""How an ingest's last step decides what a document serves, on real PostgreSQL: a version
finishing after a newer one was uploaded becomes ready without taking over, the newest takes
over, and a version deleted meanwhile is noticed (the worker then cancels its run)."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from haven.auth.principal import Principal
from haven.db.engine import transaction
from haven.db.repositories import DocumentRepository
from haven.db.tables import DocumentVersion, Role
from tests.fixtures.api import Account, upload


def upload_edition(client: TestClient, who: Account, content: bytes) -> dict[str, object]:
    response = upload(client, who, content, "handbook.txt", source_id="handbook")
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def version_id(factory: sessionmaker[Session], document_id: uuid.UUID, number: int) -> uuid.UUID:
    with transaction(factory) as session:
        found = (
            session.query(DocumentVersion).filter_by(document_id=document_id, version=number).one()
        )
        return found.id


def test_an_older_version_finishing_late_does_not_take_over(
    api_client: TestClient, tenant_a: Account, session_factory: sessionmaker[Session]
) -> None:
    first = upload_edition(api_client, tenant_a, b"the handbook, first edition")
    upload_edition(api_client, tenant_a, b"the handbook, second edition")
    document_id = uuid.UUID(str(first["document"]["id"]))  # type: ignore[index]
    v1, v2 = (version_id(session_factory, document_id, n) for n in (1, 2))
    worker = Principal(subject_id=uuid.uuid4(), tenant_id=tenant_a.tenant_id, role=Role.EDITOR)

    with transaction(session_factory) as session:
        documents = DocumentRepository(session, worker)
        assert documents.newest_version_number(document_id, v1) == 2
        documents.mark_ready(document_id, v1, 1, current=False)
    seen = api_client.get(f"/api/v1/documents/{document_id}", headers=tenant_a.headers).json()
    assert seen["current_version"] is None  # nothing searchable yet: version 2 is on its way
    assert seen["state"] == "queued"
    assert {v["version"]: v["state"] for v in seen["versions"]}[1] == "ready"

    with transaction(session_factory) as session:
        DocumentRepository(session, worker).mark_ready(document_id, v2, 2, current=True)
    seen = api_client.get(f"/api/v1/documents/{document_id}", headers=tenant_a.headers).json()
    assert (seen["state"], seen["current_version"]) == ("ready", 2)


def test_a_version_deleted_during_its_ingest_is_noticed(
    api_client: TestClient, tenant_a: Account, session_factory: sessionmaker[Session]
) -> None:
    first = upload_edition(api_client, tenant_a, b"a handbook about to be deleted")
    document_id = uuid.UUID(str(first["document"]["id"]))  # type: ignore[index]
    v1 = version_id(session_factory, document_id, 1)
    worker = Principal(subject_id=uuid.uuid4(), tenant_id=tenant_a.tenant_id, role=Role.EDITOR)
    deleted = api_client.delete(f"/api/v1/documents/{document_id}", headers=tenant_a.headers)
    assert deleted.status_code == 204
    with transaction(session_factory) as session:
        assert DocumentRepository(session, worker).newest_version_number(document_id, v1) is None


def test_another_tenant_cannot_activate_a_version(
    api_client: TestClient,
    tenant_a: Account,
    tenant_b: Account,
    session_factory: sessionmaker[Session],
) -> None:
    first = upload_edition(api_client, tenant_a, b"tenant A's handbook")
    document_id = uuid.UUID(str(first["document"]["id"]))  # type: ignore[index]
    v1 = version_id(session_factory, document_id, 1)
    outsider = Principal(subject_id=uuid.uuid4(), tenant_id=tenant_b.tenant_id, role=Role.EDITOR)
    with transaction(session_factory) as session:
        documents = DocumentRepository(session, outsider)
        assert documents.newest_version_number(document_id, v1) is None
        documents.mark_ready(document_id, v1, 1, current=True)
    seen = api_client.get(f"/api/v1/documents/{document_id}", headers=tenant_a.headers).json()
    assert (seen["state"], seen["current_version"]) == ("queued", None)
