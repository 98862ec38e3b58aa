"""The ``craft`` command line (Typer). Commands are thin: parse, call one function, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from craft_plugin import __version__
from craft_plugin.config import CraftConfig, CraftConfigError, config_reference_markdown

app = typer.Typer(
    name="craft",
    help="CRaFT (Constrained Retention Fine-Tuning) for LeRobot policies.",
    no_args_is_help=True,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"craft-plugin {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """CRaFT (Constrained Retention Fine-Tuning) for LeRobot policies."""


@app.command("config")
def config_cmd(
    file: Annotated[
        Path | None, typer.Argument(help="A CRaFT config (.json/.yaml) to validate; omit to print the defaults.")
    ] = None,
    schema: Annotated[bool, typer.Option("--schema", help="Print the JSON schema instead.")] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the configuration reference table (as in the README).")
    ] = False,
) -> None:
    """Validate a CRaFT config file and print it resolved with defaults (or print the schema)."""
    if markdown:
        typer.echo(config_reference_markdown(), nl=False)
        return
    if schema:
        typer.echo(json.dumps(CraftConfig.json_schema(), indent=2, ensure_ascii=False))
        return
    try:
        cfg = CraftConfig.from_file(file) if file is not None else CraftConfig()
    except CraftConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(code=2) from err
    typer.echo(json.dumps(cfg.to_dict(), indent=2))


if __name__ == "__main__":  # pragma: no cover
    app()
