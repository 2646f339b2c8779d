"""The launcher's state folder and the secrets it generates once per installation.

The state folder (``var/`` in the checkout, or ``HAVEN_STATE_DIR``) holds the logs, the
embedded object store and vector store, and ``secrets/``: the JWT signing keys and the object
store's credentials, generated on the first start, readable by the owner only, and reused
afterwards, so tokens and stored objects survive a restart while no two installations share a
key (a published development key would let anyone mint tokens). Each file there is named
after the setting it holds (``haven_jwt_keys``, ``haven_s3_secret_key`` ...), the layout of
Swarm's ``/run/secrets``: with ``HAVEN_SECRETS_DIR=var/secrets`` any other ``haven`` command
reaches this installation's stores as its services do.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE_DIR_ENV = "HAVEN_STATE_DIR"
JWT_KEYS_FILE = "haven_jwt_keys"
JWT_ACTIVE_KID_FILE = "haven_jwt_active_kid"


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or ROOT / "var").resolve()


def secrets_dir(state: Path) -> Path:
    folder = state / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


def write_private(path: Path, text: str) -> None:
    """Write a file readable by the owner only; atomically, so a crash leaves the old one."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.chmod(0o600)  # O_CREAT keeps the mode of a file left over by an earlier crash
    tmp.replace(path)


def read_private(path: Path) -> str:
    if path.stat().st_mode & 0o077:  # copied around with a wider mode: narrow it again
        path.chmod(0o600)
    return path.read_text().strip()


@dataclass(frozen=True)
class SigningKeys:
    """The key set (``{kid: secret}`` as JSON) and the key that signs, as the services read
    them; an operator may add a key to the file to rotate, as in production."""

    keys: str
    active_kid: str

    def environment(self) -> dict[str, str]:
        return {"HAVEN_JWT_KEYS": self.keys, "HAVEN_JWT_ACTIVE_KID": self.active_kid}


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str


def signing_keys(state: Path) -> tuple[SigningKeys, bool]:
    """This installation's JWT signing keys, and whether they were created just now."""
    folder = secrets_dir(state)
    keys_file, kid_file = folder / JWT_KEYS_FILE, folder / JWT_ACTIVE_KID_FILE
    if keys_file.exists() and kid_file.exists():
        return SigningKeys(read_private(keys_file), read_private(kid_file)), False
    kid = f"local-{secrets.token_hex(4)}"
    created = SigningKeys(json.dumps({kid: secrets.token_urlsafe(48)}), kid)
    write_private(keys_file, created.keys)
    write_private(kid_file, kid)  # last: a crash before it makes a new key next time
    return created, True


def s3_credentials(state: Path, endpoint: str) -> S3Credentials:
    """The embedded object store's credentials (it checks every request's signature); its
    endpoint is written beside them for the ``haven`` commands run by hand."""
    folder = secrets_dir(state)
    access, secret = folder / "haven_s3_access_key", folder / "haven_s3_secret_key"
    if not (access.exists() and secret.exists()):
        write_private(access, "haven")
        write_private(secret, secrets.token_urlsafe(32))
    write_private(folder / "haven_s3_endpoint", endpoint)
    return S3Credentials(read_private(access), read_private(secret))
