"""Code reviews: submit (multipart, read as it streams in), read one, list."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from api.deps import CurrentPrincipal, EditorPrincipal, RuntimeDep, SessionDep
from api.multipart import read_form
from api.pagination import Page, pagination
from api.reviews import service
from api.reviews.schemas import Publication, ReviewAccepted, ReviewPage, ReviewRead
from api.runtime import ApiRuntime
from haven.auth.principal import Principal
from haven.contracts.text import refuse_nul
from haven.db.engine import transaction
from haven.db.tables import JobKind, Review
from haven.errors import BadRequest
from haven.queueing import send_job_once, task_for
from haven.review_settings import ReviewSettings

router = APIRouter(prefix="/api/v1/reviews", tags=["reviews"])


# The form, for the OpenAPI document (the route reads the body itself, as it streams).
_FORM_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["student_id", "assignment_id", "new_commit", "new_zip"],
                    "properties": {
                        "student_id": {"type": "string"},
                        "assignment_id": {"type": "string"},
                        "new_commit": {"type": "string", "minLength": 1},
                        "old_commit": {"type": "string"},
                        "new_zip": {"type": "string", "format": "binary"},
                        "old_zip": {"type": "string", "format": "binary"},
                        "logs_zip": {"type": "string", "format": "binary"},
                    },
                }
            }
        },
    }
}


def _read(review: Review, session: Any) -> ReviewRead:
    job = service.job_of(session, review)
    delivery = service.delivery_of(session, review)
    return ReviewRead(
        task_id=review.id,
        status=job.state if job is not None else "failed",
        student_id=review.student_id,
        assignment_id=review.assignment_id,
        new_commit=review.new_commit,
        old_commit=review.old_commit,
        created_at=review.created_at,
        finished_at=review.finished_at,
        result=review.result or None,
        job_id=review.job_id,
        progress_done=job.progress_done if job else 0,
        progress_total=job.progress_total if job else 0,
        error=job.last_error if job else None,
        error_message=job.last_error_message if job else None,
        publication=Publication(
            state=delivery.state,
            attempts=delivery.attempts,
            delivered_to=delivery.delivered_to,
            delivered_at=delivery.delivered_at,
            last_error=delivery.last_error,
        )
        if delivery is not None
        else None,
    )


@router.post(
    "",
    response_model=ReviewAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=_FORM_SCHEMA,
    responses={
        400: {"description": "a blank field, a missing or hostile archive"},
        413: {"description": "an archive over its limit (named)"},
    },
)
async def submit_review(
    request: Request, principal: EditorPrincipal, runtime: RuntimeDep, response: Response
) -> ReviewAccepted:
    settings = runtime.settings.review
    with tempfile.TemporaryDirectory(prefix="haven-review-") as folder:
        form = await read_form(
            request.stream(),
            request.headers.get("content-type"),
            Path(folder),
            file_limits={
                "new_zip": settings.max_archive_bytes,
                "old_zip": settings.max_archive_bytes,
                "logs_zip": settings.max_logs_bytes,
            },
            text_fields=service.TEXT_FIELDS,
            text_limit=settings.max_field_bytes,
        )
        accepted = await runtime.in_db_thread(_store, runtime, principal, form, settings)
    if accepted.duplicate:
        response.status_code = status.HTTP_200_OK
    return accepted


def _store(
    runtime: ApiRuntime, principal: Principal, form: Any, settings: ReviewSettings
) -> ReviewAccepted:
    with transaction(runtime.session_factory) as session:
        accepted = service.submit(
            session,
            principal,
            runtime.s3,
            runtime.settings.s3_bucket,
            form,
            settings,
            runtime.settings.job_max_attempts,
        )
        result = ReviewAccepted(
            task_id=accepted.review.id,
            status=accepted.job.state if accepted.job else "failed",
            duplicate=accepted.duplicate,
        )
        job_id = accepted.job.id if accepted.job and not accepted.duplicate else None
    if job_id is not None:
        # After the commit. If the broker is down the job stays queued and the reaper sends it.
        with contextlib.suppress(Exception):
            send_job_once(
                runtime.celery,
                runtime.redis,
                task_for(JobKind.REVIEW),
                str(job_id),
                expires_seconds=runtime.settings.task_expires_seconds,
            )
    return result


@router.get("/{task_id}", response_model=ReviewRead)
def get_review(task_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal) -> ReviewRead:
    return _read(service.require(session, principal, task_id), session)


@router.get("", response_model=ReviewPage)
def list_reviews(
    session: SessionDep,
    principal: CurrentPrincipal,
    page: Annotated[Page, pagination(default_limit=50, max_limit=200)],
    student_id: Annotated[str | None, Query(max_length=service.FIELD_MAX)] = None,
    assignment_id: Annotated[str | None, Query(max_length=service.FIELD_MAX)] = None,
) -> ReviewPage:
    for value in (student_id, assignment_id):
        if value is not None:
            try:
                refuse_nul(value)
            except ValueError as exc:
                raise BadRequest("filters must not contain NUL", code="review.filter") from exc
    rows, total = service.ReviewRepository(session, principal).list_for(
        student_id=student_id, assignment_id=assignment_id, offset=page.offset, limit=page.limit
    )
    return ReviewPage(items=[_read(r, session) for r in rows], total=total)
