"""The read-only switch (platform admins): ``GET`` / ``PUT /api/v1/admin/read-only``.

Also ``haven admin read-only on|off|status`` on the command line. See ``haven.read_only``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, StringConstraints

from api.deps import OutboxDep, PlatformAdminPrincipal, RequestIdDep, RuntimeDep, SessionDep
from haven import read_only
from haven.contracts.text import FreeText
from haven.db.repositories import AuditLog

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


class ReadOnlyUpdate(BaseModel):
    on: bool
    # Shown to every refused caller and in /api/version (the web app's banner).
    reason: Annotated[FreeText, StringConstraints(max_length=read_only.REASON_MAX)] | None = None


class ReadOnlyRead(BaseModel):
    on: bool
    reason: str | None
    since: datetime | None
    by: str | None

    @classmethod
    def of(cls, state: read_only.ReadOnlyState) -> ReadOnlyRead:
        return cls(on=state.on, reason=state.reason, since=state.since, by=state.by)


@router.get("/read-only", response_model=ReadOnlyRead)
def get_read_only(session: SessionDep, _: PlatformAdminPrincipal) -> ReadOnlyRead:
    return ReadOnlyRead.of(read_only.read(session))


@router.put("/read-only", response_model=ReadOnlyRead)
def set_read_only(
    body: ReadOnlyUpdate,
    session: SessionDep,
    outbox: OutboxDep,
    runtime: RuntimeDep,
    actor: PlatformAdminPrincipal,
    rid: RequestIdDep,
) -> ReadOnlyRead:
    """Switch read-only mode on (with the reason users will see) or off; audited."""
    state = read_only.switch(
        session,
        AuditLog(session, actor, rid),
        on=body.on,
        reason=body.reason,
        by=f"{actor.kind}:{actor.subject_id}",
    )
    # This replica sees it from the next request on; the others within their cache time.
    outbox.after_commit(runtime.read_only.forget)
    return ReadOnlyRead.of(state)
