"""The maintenance schedule: one Celery beat entry per task, on the task's cron expression.

Each task has a default in its registration; ``HAVEN_MAINTENANCE_SCHEDULE`` (a JSON object,
``{"backup": "30 1 * * *", "stale-uploads": "off"}``) overrides it per task, ``off`` leaving
the task to operators. Beat only enqueues: its entry sends ``maintenance.enqueue`` with the
task's name, which creates the task's job (unless one is still queued or running) and sends
it to the ``maintenance`` queue, where any maintenance worker runs it.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

ENQUEUE_TASK = "maintenance.enqueue"
OFF = "off"


def parse_cron(expression: str) -> crontab:
    """A five-field cron expression (minute hour day-of-month month day-of-week, UTC) as
    Celery's ``crontab``; ``ValueError`` naming the expression when it is not one."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"{expression!r} is not a cron expression (minute hour day month weekday)")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        schedule = crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except Exception as exc:  # celery raises ValueError or its own ParseException
        raise ValueError(f"{expression!r} is not a cron expression: {exc}") from exc
    return schedule


def effective_schedule(defaults: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """Each task's cron expression (or ``off``): the override where one is set."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"HAVEN_MAINTENANCE_SCHEDULE names unknown tasks: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(defaults))})"
        )
    return {name: overrides.get(name, cron).strip() for name, cron in defaults.items()}


def beat_entries(schedule: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Celery beat entries for every scheduled (not ``off``) task."""
    return {
        f"maintenance-{name}": {
            "task": ENQUEUE_TASK,
            "schedule": parse_cron(cron),
            "args": [name],
        }
        for name, cron in schedule.items()
        if cron != OFF
    }
