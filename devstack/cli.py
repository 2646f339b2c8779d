"""The ``up`` command, added to the ``haven`` CLI through the ``haven.cli`` entry-point group
(pyproject.toml), so that the shared package never imports the local launcher."""

from __future__ import annotations

from typing import Annotated

import typer


def up(api_port: Annotated[int, typer.Option(help="port of the API")] = 8080) -> None:
    """Run Haven locally on its embedded defaults; a service that stops is restarted."""
    from devstack.up import run

    run(api_port=api_port)
