"""A backup's ``manifest.json``: what it holds (every file with its size and sha256), what
it was taken from (Haven's version, the schema revision, the model aliases) and what a restore
must find again (row counts and checksums, objects, vectors, and the top-10 of fixed queries).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from haven.backup.target import MANIFEST, BackupError, BackupTarget, safe_relative

FORMAT = 1
REQUIRED = (
    "format",
    "id",
    "created_at",
    "haven_version",
    "schema_revision",
    "files",
    "counts",
    "postgres",
    "objects",
    "vectors",
    "queries",
)


def read_manifest(target: BackupTarget, backup_id: str) -> dict[str, Any]:
    """The backup's manifest, checked for shape; ``BackupError`` naming what is wrong."""
    if not target.exists(backup_id, MANIFEST):
        raise BackupError(
            "restore.no_manifest",
            f"backup {backup_id} has no {MANIFEST} in {target.description} (unknown, or "
            "incomplete: a backup writes its manifest last)",
            permanent=True,
        )
    raw = b"".join(target.open(backup_id, MANIFEST))
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackupError(
            "restore.bad_manifest", f"{MANIFEST} of {backup_id} is not JSON: {exc}"
        ) from exc
    if not isinstance(manifest, dict):
        raise BackupError("restore.bad_manifest", f"{MANIFEST} of {backup_id} is not an object")
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise BackupError(
            "restore.bad_manifest", f"{MANIFEST} of {backup_id} lacks {', '.join(missing)}"
        )
    if manifest["format"] != FORMAT:
        raise BackupError(
            "restore.bad_manifest",
            f"{MANIFEST} of {backup_id} is format {manifest['format']}; this Haven reads {FORMAT}",
        )
    if manifest["id"] != backup_id:
        raise BackupError(
            "restore.bad_manifest", f"{MANIFEST} of {backup_id} names backup {manifest['id']}"
        )
    for path, entry in manifest["files"].items():
        safe_relative(path)
        if not isinstance(entry, dict) or {"size", "sha256"} - set(entry):
            raise BackupError("restore.bad_manifest", f"{MANIFEST} entry for {path} is incomplete")
    return manifest


def verify_files(
    target: BackupTarget, backup_id: str, manifest: dict[str, Any]
) -> Iterator[tuple[str, int]]:
    """Read every file of the backup and check its size and sha256; ``BackupError`` naming
    the first file that is missing or does not match. Yields each checked path and size."""
    for path, entry in sorted(manifest["files"].items()):
        if not target.exists(backup_id, path):
            raise BackupError("restore.missing_file", f"{path} is missing from backup {backup_id}")
        digest = hashlib.sha256()
        size = 0
        for chunk in target.open(backup_id, path):
            digest.update(chunk)
            size += len(chunk)
        if size != int(entry["size"]) or digest.hexdigest() != entry["sha256"]:
            raise BackupError(
                "restore.checksum",
                f"{path} in backup {backup_id} does not match the manifest "
                f"(size {size}, expected {entry['size']}; sha256 differs: "
                f"{digest.hexdigest() != entry['sha256']})",
            )
        yield path, size
