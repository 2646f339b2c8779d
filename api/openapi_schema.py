"""Print the API's OpenAPI schema (JSON) to stdout: the web app's typed client is generated
from it (``web/scripts/openapi.sh``). Builds the application without starting it, so it needs
no running service."""

from __future__ import annotations

import json
import sys

from api.main import create_app
from api.settings import ApiSettings


def main() -> None:
    app = create_app(ApiSettings(env="test", log_level="WARNING"))
    json.dump(app.openapi(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
