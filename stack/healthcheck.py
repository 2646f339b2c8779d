"""Container health checks, with nothing but the image's Python (the slim image has no curl).

python stack/healthcheck.py http URL   exit 0 when URL answers 2xx within the timeout
python stack/healthcheck.py broker     exit 0 when the Celery broker accepts a connection
                                       (beat has no HTTP port; the broker is what it needs)
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 5.0


def check_http(url: str) -> int:
    if not url.startswith(("http://", "https://")):
        print(f"not an http URL: {url}", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            status = int(response.status)
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    if not 200 <= status < 300:
        print(f"{url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


def check_broker() -> int:
    from kombu import Connection

    from haven.settings import StoreSettings

    url = StoreSettings().broker_url.get_secret_value()
    try:
        with Connection(url, connect_timeout=TIMEOUT_SECONDS) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # any failure to connect is "unhealthy", with the reason
        print(f"broker: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    match argv:
        case ["http", url]:
            return check_http(url)
        case ["broker"]:
            return check_broker()
        case _:
            print(__doc__, file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
