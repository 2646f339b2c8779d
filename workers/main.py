"""Entry point of Celery's command line: ``celery -A workers.main worker -B``."""

from workers.app import create_worker_app
from workers.settings import WorkerSettings

app = create_worker_app(WorkerSettings())
