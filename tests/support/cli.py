"""`craft` commands in-process, for tests that need the command's output, not its process."""

from __future__ import annotations

from click.testing import Result


def craft_cli(*argv: str) -> Result:
    """``craft ARGV...`` through Typer's CliRunner: the same code as the console script, without
    its ~20 s start-up (torch, LeRobot). Tests that check the console script itself, or a kill,
    run it as a subprocess."""
    from typer.testing import CliRunner

    from craft_plugin.cli import app

    return CliRunner().invoke(app, list(argv))
