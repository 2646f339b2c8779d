"""Backups into a second S3 endpoint's bucket (here a second bucket of the moto server), read
back by the dry run, a corrupted object refused by name, retention on that target, and the
live bucket refused as a target."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from minio import Minio

from haven.backup.create import Sources, run_backup
from haven.backup.restore import dry_run
from haven.backup.retention import apply_retention
from haven.backup.target import BackupError, S3Target, make_target
from haven.db.engine import make_engine
from haven.maintenance_settings import BackupSettings
from haven.settings import StoreSettings
from haven.storage import make_client
from haven.vectors import close_embedded, make_index, make_qdrant
from tests.fixtures.api import Account, upload


def _settings(store_settings: StoreSettings) -> BackupSettings:
    return BackupSettings(
        target="s3",
        s3_endpoint=store_settings.s3_endpoint,
        s3_bucket=f"backups-{uuid.uuid4().hex[:10]}",
        s3_access_key=store_settings.s3_access_key,
        s3_secret_key=store_settings.s3_secret_key,
    )


def _backup(store_settings: StoreSettings, backup: BackupSettings, when: datetime) -> Any:
    engine = make_engine(store_settings)
    store = make_qdrant(store_settings)
    try:
        sources = Sources(
            stores=store_settings,
            backup=backup,
            engine=engine,
            s3=make_client(store_settings),
            index=make_index(store_settings, store),
        )
        return run_backup(sources, make_target(backup, store_settings), now=when)
    finally:
        close_embedded(store_settings)
        engine.dispose()


def test_a_backup_on_a_second_s3_target_is_checked_and_retained(
    api_client: TestClient, store_settings: StoreSettings, tenant_a: Account
) -> None:
    for n in range(3):
        assert upload(api_client, tenant_a, f"note {n}".encode(), name=f"n{n}.txt").status_code in (
            200,
            201,
            202,
        )
    backup = _settings(store_settings)
    now = datetime.now(UTC)
    report = _backup(store_settings, backup, now)
    assert report["objects"] == 3 and report["vectors_mode"] == "none"
    assert report["rows"]["documents"] >= 3

    target = make_target(backup, store_settings)
    assert isinstance(target, S3Target)
    checked = dry_run(target, report["backup_id"])
    assert checked["files"] == report["files"]

    # One object in the backup bucket changed: the dry run names it.
    client: Minio = target.client
    key = next(
        o.object_name
        for o in client.list_objects(
            backup.s3_bucket, prefix=f"backups/{report['backup_id']}/objects/", recursive=True
        )
    )
    assert key is not None
    client.put_object(backup.s3_bucket, key, _Bytes(b"tampered"), length=8)
    with pytest.raises(BackupError) as refused:
        dry_run(target, report["backup_id"])
    assert refused.value.code == "restore.checksum"
    assert key.split(f"{report['backup_id']}/", 1)[1] in refused.value.message

    # Two older backups: with one daily and no weekly kept, only the newest stays.
    older = [_backup(store_settings, backup, now - timedelta(days=d)) for d in (1, 2)]
    kept = apply_retention(target, keep_daily=1, keep_weekly=0)
    assert kept["kept"] == [report["backup_id"]]
    assert sorted(kept["deleted"]) == sorted(b["backup_id"] for b in older)
    assert target.backups() == [report["backup_id"]]


def test_the_live_bucket_is_refused_as_a_backup_target(store_settings: StoreSettings) -> None:
    same = BackupSettings(
        target="s3", s3_endpoint=store_settings.s3_endpoint, s3_bucket=store_settings.s3_bucket
    )
    with pytest.raises(BackupError, match="must not live on the store it protects"):
        make_target(same, store_settings)


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        out, self.data = (self.data, b"") if n < 0 else (self.data[:n], self.data[n:])
        return out
