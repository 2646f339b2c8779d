"""The maintenance schedule and backup retention, as an operator configures them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from celery.schedules import crontab

from haven.backup.retention import to_keep
from haven.backup.target import BackupError, safe_relative
from haven.maintenance_settings import BackupSettings, MaintenanceSettings
from workers.maintenance.enqueue import maintenance_schedule
from workers.maintenance.schedule import ENQUEUE_TASK, beat_entries, parse_cron
from workers.maintenance.tasks import tasks


def test_every_task_has_a_schedule_beat_can_run() -> None:
    entries = beat_entries(maintenance_schedule(MaintenanceSettings()))
    assert {e["args"][0] for e in entries.values()} == set(tasks())
    backup = entries["maintenance-backup"]
    assert backup["task"] == ENQUEUE_TASK  # beat only enqueues; the job runs on the queue
    assert backup["schedule"] == crontab(minute="0", hour="2")


def test_the_schedule_is_overridden_per_task_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "HAVEN_MAINTENANCE_SCHEDULE", json.dumps({"backup": "30 1 * * 1-5", "stale-uploads": "off"})
    )
    schedule = maintenance_schedule(MaintenanceSettings())
    assert schedule["backup"] == "30 1 * * 1-5"
    entries = beat_entries(schedule)
    assert entries["maintenance-backup"]["schedule"] == crontab(
        minute="30", hour="1", day_of_week="1-5"
    )
    assert "maintenance-stale-uploads" not in entries  # off: operators run it by hand


@pytest.mark.parametrize("expression", ["0 2 * *", "61 2 * * *", "every night", "0 25 * * *"])
def test_a_wrong_cron_expression_is_refused_by_name(expression: str) -> None:
    with pytest.raises(ValueError, match="cron expression"):
        parse_cron(expression)


def test_a_schedule_for_an_unknown_task_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown tasks: bakcup"):
        maintenance_schedule(MaintenanceSettings(schedule={"bakcup": "0 2 * * *"}))
    with pytest.raises(ValueError, match="JSON object"):
        MaintenanceSettings(schedule="0 2 * * *")  # type: ignore[arg-type]


def test_retention_keeps_n_daily_and_m_weekly() -> None:
    # Three a day for 40 days, 2026-10-01 .. 2026-11-09.
    ids = [f"202610{d:02d}T0{h}0000Z" for d in range(1, 32) for h in (1, 2, 3)]
    ids += [f"202611{d:02d}T0{h}0000Z" for d in range(1, 10) for h in (1, 2, 3)]
    keep = to_keep(ids, keep_daily=7, keep_weekly=4)
    daily = {f"202611{d:02d}T030000Z" for d in range(3, 10)}  # the newest of the last 7 days
    assert daily <= keep
    # The newest of each of the last four ISO weeks: 11-09 (a Monday) and 11-08 are among
    # the days; the weeks before end on Sundays 11-01 and 10-25.
    assert {"20261025T030000Z", "20261101T030000Z"} <= keep
    assert len(keep) == 9
    assert to_keep(ids, keep_daily=1, keep_weekly=0) == {"20261109T030000Z"}


def test_backup_paths_stay_inside_the_backup() -> None:
    assert safe_relative("objects/tenant/1/doc.pdf") == "objects/tenant/1/doc.pdf"
    for bad in ("../etc/passwd", "/abs", "a/../../b", "", "a//b", "a/./b"):
        with pytest.raises(BackupError):
            safe_relative(bad)


def test_an_s3_target_needs_its_endpoint() -> None:
    with pytest.raises(ValueError, match="HAVEN_BACKUP_S3_ENDPOINT"):
        BackupSettings(target="s3")


def test_the_worker_app_beats_each_task_beside_the_reaper(tmp_path: Path) -> None:
    from haven.queueing import REAP_TASK
    from workers.app import create_worker_app
    from workers.settings import WorkerSettings

    beat = create_worker_app(
        WorkerSettings(env="test", log_json=False, beat_schedule_path=tmp_path / "beat")
    ).conf.beat_schedule
    assert beat["reap-jobs"]["task"] == REAP_TASK
    assert beat["maintenance-backup"]["schedule"] == crontab(minute="0", hour="2")
    assert beat["maintenance-stale-uploads"]["args"] == ["stale-uploads"]

    quiet = create_worker_app(
        WorkerSettings(
            env="test",
            log_json=False,
            beat_schedule_path=tmp_path / "beat",
            maintenance=MaintenanceSettings(scheduled=False),
        )
    ).conf.beat_schedule
    assert "reap-jobs" in quiet
    assert not [name for name in quiet if name.startswith("maintenance-")]
