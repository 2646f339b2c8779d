"""Accepting code-review submissions: validate the form, check each archive's central
directory (hostile archives are refused here, with the reason, before anything is stored),
store the archives under the tenant's prefix and queue one review job. The same student,
assignment, commit and archive hashes submitted again return the existing review."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.multipart import Form
from haven.archives import inspect
from haven.auth.principal import Principal
from haven.db.repositories import JobRepository, TenantRepository
from haven.db.tables import Job, JobKind, JobState, Review, ReviewDelivery
from haven.errors import BadRequest, NotFound, Unavailable
from haven.review_settings import ReviewSettings
from haven.storage import remove_on_rollback, tenant_key

TEXT_FIELDS = {"student_id", "assignment_id", "new_commit", "old_commit"}
ARCHIVES = ("new_zip", "old_zip", "logs_zip")
FIELD_MAX = 200  # the columns' length


class ReviewRepository(TenantRepository[Review]):
    model = Review
    label = "review"

    def by_key(self, key: str) -> Review | None:
        stmt = self._select().where(Review.idempotency_key == key)
        return self.session.execute(stmt).scalar_one_or_none()

    def list_for(
        self, *, student_id: str | None, assignment_id: str | None, offset: int, limit: int
    ) -> tuple[list[Review], int]:
        stmt = self._select()
        if student_id is not None:
            stmt = stmt.where(Review.student_id == student_id)
        if assignment_id is not None:
            stmt = stmt.where(Review.assignment_id == assignment_id)
        total = self.session.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
        rows = self.session.execute(
            stmt.order_by(Review.created_at.desc(), Review.id).offset(offset).limit(limit)
        ).scalars()
        return list(rows), int(total)


@dataclass(frozen=True)
class Submission:
    student_id: str
    assignment_id: str
    new_commit: str
    old_commit: str | None


def _field(form: Form, name: str, *, required: bool) -> str | None:
    value = form.fields.get(name)
    if value is None or not value.strip():
        if required:
            raise BadRequest(f"{name} is required and must not be blank", code=f"review.{name}")
        return None
    value = value.strip()
    if "\x00" in value:
        raise BadRequest(f"{name} must not contain NUL characters", code=f"review.{name}")
    if len(value) > FIELD_MAX:
        raise BadRequest(f"{name} is longer than {FIELD_MAX} characters", code=f"review.{name}")
    return value


def validate(form: Form, settings: ReviewSettings) -> Submission:
    submission = Submission(
        student_id=_field(form, "student_id", required=True) or "",
        assignment_id=_field(form, "assignment_id", required=True) or "",
        new_commit=_field(form, "new_commit", required=True) or "",
        old_commit=_field(form, "old_commit", required=False),
    )
    if "new_zip" not in form.files:
        raise BadRequest("new_zip is required", code="review.new_zip")
    for part in ARCHIVES:
        if part in form.files:
            if form.files[part].size == 0:
                raise BadRequest(f"{part} is empty", code="archive.empty")
            inspect(form.files[part].path, part, settings.archive_limits(part))
    return submission


def idempotency_key(submission: Submission, form: Form) -> str:
    parts = [submission.student_id, submission.assignment_id, submission.new_commit]
    parts += [form.files[p].sha256 if p in form.files else "" for p in ARCHIVES]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class Accepted:
    review: Review
    job: Job | None
    duplicate: bool


def submit(
    session: Session,
    principal: Principal,
    s3: Any,
    bucket: str,
    form: Form,
    settings: ReviewSettings,
    max_attempts: int,
) -> Accepted:
    """Store the submission and its job (the caller commits, then sends the job)."""
    submission = validate(form, settings)
    key = idempotency_key(submission, form)
    reviews = ReviewRepository(session, principal)
    existing = reviews.by_key(key)
    if existing is not None:
        return Accepted(existing, _job(session, principal, existing), duplicate=True)

    review_id = uuid.uuid4()
    objects = {
        part.removesuffix("_zip"): tenant_key(
            principal.tenant_id, "reviews", str(review_id), part.removesuffix("_zip") + ".zip"
        )
        for part in ARCHIVES
        if part in form.files
    }
    try:
        with session.begin_nested():
            review = reviews.add(
                Review(
                    id=review_id,
                    student_id=submission.student_id,
                    assignment_id=submission.assignment_id,
                    new_commit=submission.new_commit,
                    old_commit=submission.old_commit,
                    created_by=principal.subject_id,
                    idempotency_key=key,
                    new_sha256=form.files["new_zip"].sha256,
                    old_sha256=form.files["old_zip"].sha256 if "old_zip" in form.files else None,
                    logs_sha256=form.files["logs_zip"].sha256 if "logs_zip" in form.files else None,
                    objects=objects,
                )
            )
    except IntegrityError:
        # The same submission, accepted a moment ago by a concurrent request.
        found = reviews.by_key(key)
        if found is None:
            raise
        return Accepted(found, _job(session, principal, found), duplicate=True)

    job = JobRepository(session, principal).add(
        Job(
            kind=JobKind.REVIEW,
            state=JobState.QUEUED,
            subject_id=review.id,
            idempotency_key=f"{principal.tenant_id}:{review.id}:review",
            params={"review_id": str(review.id)},
            max_attempts=max_attempts,
        )
    )
    review.job_id = job.id
    for part, object_key in objects.items():
        try:
            s3.fput_object(
                bucket, object_key, str(form.files[part + "_zip"].path),
                content_type="application/zip",
            )  # fmt: skip
        except Exception as exc:  # minio raises S3Error or urllib3 errors
            raise Unavailable(
                "the object store refused the archive; try again",
                retry_after=5,
                code="storage.unavailable",
            ) from exc
        remove_on_rollback(session, s3, bucket, object_key)
    session.flush()
    return Accepted(review, job, duplicate=False)


def _job(session: Session, principal: Principal, review: Review) -> Job | None:
    return JobRepository(session, principal).get(review.job_id) if review.job_id else None


def job_of(session: Session, review: Review) -> Job | None:
    """The review's job (the review was already read under its tenant)."""
    if review.job_id is None:
        return None
    job = session.get(Job, review.job_id)
    return job if job is not None and job.tenant_id == review.tenant_id else None


def delivery_of(session: Session, review: Review) -> ReviewDelivery | None:
    stmt = (
        select(ReviewDelivery)
        .where(ReviewDelivery.review_id == review.id, ReviewDelivery.tenant_id == review.tenant_id)
        .order_by(ReviewDelivery.created_at.desc())
        .limit(1)
    )
    return session.execute(stmt).scalar_one_or_none()


def require(session: Session, principal: Principal, task_id: uuid.UUID) -> Review:
    review = ReviewRepository(session, principal).get(task_id)
    if review is None:
        raise NotFound("review", task_id)
    return review
