from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

Period = Literal["1h", "24h", "7d"]


class Latency(BaseModel):
    p50_ms: float | None
    p95_ms: float | None


class UsageFigures(BaseModel):
    requests: int = Field(description="answers asked of llm or served from the cache")
    prompt_tokens: int
    completion_tokens: int
    cached_answers: int
    active_users: int = Field(description="distinct users who asked")
    active_api_keys: int
    errors: int = Field(description="answers that failed once started")
    interrupted: int = Field(description="answers whose client left before the end")
    latency: Latency


class UsageBucket(UsageFigures):
    start: datetime


class CallerUsage(BaseModel):
    user_id: uuid.UUID | None
    username: str | None
    api_key_id: uuid.UUID | None
    api_key_name: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_answers: int
    errors: int


class BudgetRead(BaseModel):
    tenant_id: uuid.UUID
    budget: int | None = Field(description="tokens per period; null is unlimited")
    used: int
    reserved: int = Field(description="held by answers being generated")
    left: int | None
    period_start: datetime
    resets_at: datetime


class UsageRead(BaseModel):
    period: Period
    tenant_id: uuid.UUID | None = Field(description="null: every tenant")
    since: datetime
    until: datetime
    bucket_seconds: int
    totals: UsageFigures
    buckets: list[UsageBucket]
    users: list[CallerUsage]
    budget: BudgetRead | None


class BudgetUpdate(BaseModel):
    # null: unlimited.
    token_budget: int | None = Field(ge=0, le=10**15)
