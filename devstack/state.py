"""The launcher's state folder and the secrets it generates once per installation.

The state folder (``var/`` in the checkout, or ``HAVEN_STATE_DIR``) holds the logs, the
embedded object store and vector store, and ``secrets/``: the JWT signing key and the object
store's credentials. They are generated on the first start, readable by the owner only, and
reused afterwards, so tokens and stored objects survive a restart while no two installations
share a key (a published development key would let anyone mint tokens).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE_DIR_ENV = "HAVEN_STATE_DIR"
SIGNING_KEY_FILE = "jwt-signing-key.json"
S3_CREDENTIALS_FILE = "s3-credentials.json"


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or ROOT / "var").resolve()


def secrets_dir(state: Path) -> Path:
    folder = state / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


def write_private(path: Path, data: object) -> None:
    """Write JSON readable by the owner only; atomically, so a crash leaves the old file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
    tmp.chmod(0o600)  # O_CREAT keeps the mode of a file left over by an earlier crash
    tmp.replace(path)


def _read_private(path: Path) -> dict[str, str]:
    if path.stat().st_mode & 0o077:  # copied around with a wider mode: narrow it again
        path.chmod(0o600)
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return {str(k): str(v) for k, v in data.items()}


@dataclass(frozen=True)
class SigningKey:
    kid: str
    secret: str

    def environment(self) -> dict[str, str]:
        """The settings every service reads its token keys from."""
        return {
            "HAVEN_JWT_KEYS": json.dumps({self.kid: self.secret}),
            "HAVEN_JWT_ACTIVE_KID": self.kid,
        }


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str


def signing_key(state: Path) -> tuple[SigningKey, bool]:
    """This installation's JWT signing key, and whether it was created just now."""
    path = secrets_dir(state) / SIGNING_KEY_FILE
    if path.exists():
        data = _read_private(path)
        return SigningKey(kid=data["kid"], secret=data["secret"]), False
    key = SigningKey(kid=f"local-{secrets.token_hex(4)}", secret=secrets.token_urlsafe(48))
    write_private(path, asdict(key))
    return key, True


def s3_credentials(state: Path) -> S3Credentials:
    """The embedded object store's credentials (the store checks every request's signature)."""
    path = secrets_dir(state) / S3_CREDENTIALS_FILE
    if path.exists():
        data = _read_private(path)
        return S3Credentials(access_key=data["access_key"], secret_key=data["secret_key"])
    credentials = S3Credentials(access_key="haven", secret_key=secrets.token_urlsafe(32))
    write_private(path, asdict(credentials))
    return credentials
