"""One pagination dependency for every list route: ``offset`` and ``limit`` with bounds that
PostgreSQL can take (an offset past 2^63 does not fit its ``bigint`` and was a 500).

A route picks its page size and maximum; the offset bound is the same everywhere, far above
any list Haven keeps and far below what the database refuses.
"""

# No `from __future__ import annotations` here: FastAPI reads the annotations of the inner
# dependency at runtime, and as strings they could not see the enclosing function's bounds.

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query

MAX_OFFSET = 1_000_000


@dataclass(frozen=True)
class Page:
    offset: int
    limit: int


def pagination(*, default_limit: int = 50, max_limit: int = 200) -> Any:
    """A dependency (``page: Annotated[Page, pagination(...)]``) reading ``offset`` and
    ``limit`` from the query string."""

    def page(
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        limit: Annotated[int, Query(ge=1, le=max_limit)] = default_limit,
    ) -> Page:
        return Page(offset=offset, limit=limit)

    return Depends(page)
