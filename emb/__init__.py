"""The embedding service: dense vectors from registry models, sparse lexical vectors."""

from models import offline as _offline  # noqa: F401 - before any model library is imported
