"""Free text that a client sends and Haven stores: one type, so every such field refuses the
same hostile input the same way (a 422 naming the field, never a database error).

PostgreSQL cannot store a NUL character in any text column, so a NUL that got past the schema
would fail the insert (a 500) after other work was done; the length caps match the columns.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, StringConstraints

NUL = "\x00"


def refuse_nul(value: str) -> str:
    if NUL in value:
        raise ValueError("must not contain NUL characters")
    return value


# Any free text; add a length with ``Annotated[FreeText, StringConstraints(max_length=...)]``.
FreeText = Annotated[str, AfterValidator(refuse_nul)]

# The shapes Haven stores, named after what they hold (caps = their columns).
Title = Annotated[FreeText, StringConstraints(max_length=500)]
Name = Annotated[FreeText, StringConstraints(min_length=1, max_length=200)]
Tag = Annotated[FreeText, StringConstraints(min_length=1, max_length=100)]
SourceId = Annotated[FreeText, StringConstraints(min_length=1, max_length=500)]
Filename = Annotated[FreeText, StringConstraints(min_length=1, max_length=500)]
MimeType = Annotated[FreeText, StringConstraints(min_length=1, max_length=200)]
