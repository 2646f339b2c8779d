"""Celery workers: ingest, analyze, review and maintenance tasks."""
