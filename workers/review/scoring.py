"""The overall score, 0 to 5, from what the review found — computed, not asked of the model, so
the same findings always give the same score (a small model's own grade is noise).

Rubric (``RUBRIC`` travels with every result): start at 5 and subtract
- linters: 0.5 per error, 0.2 per warning, 0.05 per info, at most 2.5 in all;
- tests (when they ran): up to 1.5, in proportion to the share that failed;
- run logs: 0.25 per error group, at most 0.5;
- LLM findings: 0.2 per error, 0.1 per warning, at most 0.5;
then round to the nearest 0.5. 5 = nothing found; 3 = several problems to fix;
below 2 = the submission does not work or has serious defects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workers.review.linters import Finding

RUBRIC = (
    "5 minus: linters 0.5/error, 0.2/warning, 0.05/info (max 2.5); failed tests up to 1.5 by "
    "share; log error groups 0.25 each (max 0.5); LLM findings 0.2/error, 0.1/warning (max "
    "0.5); rounded to 0.5"
)


def score(
    static: Sequence[Finding],
    llm_findings: Sequence[dict[str, Any]],
    logs: dict[str, Any] | None,
    tests: dict[str, Any],
) -> float:
    weights = {"error": 0.5, "warning": 0.2, "info": 0.05}
    penalty = min(2.5, sum(weights.get(f.severity, 0.0) for f in static))
    if tests.get("ran") and tests.get("total"):
        failing = tests.get("failed", 0) + tests.get("errors", 0)
        penalty += 1.5 * failing / tests["total"]
    if logs:
        errors = sum(1 for g in logs.get("groups", []) if g.get("severity") == "error")
        penalty += min(0.5, 0.25 * errors)
    llm_weights = {"error": 0.2, "warning": 0.1}
    penalty += min(0.5, sum(llm_weights.get(f.get("severity", ""), 0.0) for f in llm_findings))
    return max(0.0, min(5.0, round((5.0 - penalty) * 2) / 2))
