"""Analyses: map-reduce analyses of whole documents, run as jobs (``workers.analyze``).
Editors create, cancel, retry and delete; viewers read and download."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response, status

from api.analyses import service
from api.analyses.schemas import AnalysisCreate, AnalysisPage, AnalysisRead
from api.deps import (
    CurrentPrincipal,
    EditorPrincipal,
    OutboxDep,
    RequestIdDep,
    RuntimeDep,
    SessionDep,
)
from api.documents.schemas import DownloadLink
from api.jobs import service as jobs_service
from api.pagination import Page, pagination
from haven.auth.principal import Principal
from haven.errors import Conflict
from haven.jobs import signal_cancel

router = APIRouter(prefix="/api/v1/analyses", tags=["analyses"])


def _analyses(
    session: SessionDep,
    outbox: OutboxDep,
    runtime: RuntimeDep,
    rid: RequestIdDep,
    principal: Principal,
) -> service.Analyses:
    return service.Analyses(
        session=session,
        principal=principal,
        outbox=outbox,
        s3=runtime.s3,
        presigner=runtime.presigner,
        settings=runtime.settings,
        request_id=rid,
    )


def _editor(
    session: SessionDep,
    outbox: OutboxDep,
    runtime: RuntimeDep,
    rid: RequestIdDep,
    principal: EditorPrincipal,
) -> service.Analyses:
    return _analyses(session, outbox, runtime, rid, principal)


def _reader(
    session: SessionDep,
    outbox: OutboxDep,
    runtime: RuntimeDep,
    rid: RequestIdDep,
    principal: CurrentPrincipal,
) -> service.Analyses:
    return _analyses(session, outbox, runtime, rid, principal)


EditorAnalyses = Annotated[service.Analyses, Depends(_editor)]
ReaderAnalyses = Annotated[service.Analyses, Depends(_reader)]


@router.post("", response_model=AnalysisRead, status_code=status.HTTP_201_CREATED)
def create_analysis(
    body: AnalysisCreate, analyses: EditorAnalyses, response: Response
) -> AnalysisRead:
    created = service.create(analyses, body)
    if created.reused:  # the same request over the same versions: the stored analysis
        response.status_code = status.HTTP_200_OK
    return service.read(analyses, created.analysis, reused=created.reused)


@router.get("", response_model=AnalysisPage)
def list_analyses(
    analyses: ReaderAnalyses,
    page: Annotated[Page, pagination(default_limit=50, max_limit=200)],
) -> AnalysisPage:
    rows, total = analyses.repo.page(offset=page.offset, limit=page.limit)
    return AnalysisPage(
        items=service.reads(analyses, rows), total=total, offset=page.offset, limit=page.limit
    )


@router.get("/{analysis_id}", response_model=AnalysisRead)
def get_analysis(analysis_id: uuid.UUID, analyses: ReaderAnalyses) -> AnalysisRead:
    return service.read(analyses, analyses.repo.require(analysis_id))


@router.get("/{analysis_id}/artifact", response_model=DownloadLink)
def download_artifact(
    analysis_id: uuid.UUID,
    analyses: ReaderAnalyses,
    format: Annotated[Literal["markdown", "json"], Query()] = "markdown",
) -> DownloadLink:
    url, expires_at = service.download_url(analyses, analysis_id, format)
    return DownloadLink(url=url, expires_at=expires_at)


@router.post("/{analysis_id}/cancel", response_model=AnalysisRead)
def cancel_analysis(
    analysis_id: uuid.UUID, analyses: EditorAnalyses, runtime: RuntimeDep
) -> AnalysisRead:
    analysis = analyses.repo.require(analysis_id)
    if analysis.job_id is None:
        raise Conflict("the analysis has no job", code="job.gone")
    job_id = analysis.job_id
    jobs_service.cancel(analyses.session, analyses.principal, job_id, analyses.request_id)
    analyses.outbox.after_commit(lambda: signal_cancel(runtime.redis, job_id))
    return service.read(analyses, analysis)


@router.post("/{analysis_id}/retry", response_model=AnalysisRead)
def retry_analysis(
    analysis_id: uuid.UUID, analyses: EditorAnalyses, runtime: RuntimeDep
) -> AnalysisRead:
    analysis = analyses.repo.require(analysis_id)
    if analysis.job_id is None:
        raise Conflict("the analysis has no job", code="job.gone")
    jobs_service.retry(
        analyses.session,
        analyses.principal,
        analysis.job_id,
        analyses.request_id,
        analyses.outbox,
        max_retries=runtime.settings.job_max_retries,
    )
    return service.read(analyses, analysis)


@router.delete("/{analysis_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_analysis(
    analysis_id: uuid.UUID, analyses: EditorAnalyses, runtime: RuntimeDep
) -> Response:
    canceled = service.delete(analyses, analysis_id)
    if canceled is not None:
        analyses.outbox.after_commit(lambda: signal_cancel(runtime.redis, canceled))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
