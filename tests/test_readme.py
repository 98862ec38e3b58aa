"""The README's promises that a test can hold it to."""

from __future__ import annotations

import re
from pathlib import Path

from craft_plugin.config import config_reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_configuration_reference_matches_the_schema():
    m = re.search(r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->", README, re.S)
    assert m, "README lacks the config-reference markers"
    assert m.group(1) == config_reference_markdown(), "README config reference is stale: run `craft config --markdown`"


def test_first_two_commands_are_make_demo_and_make_test():
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands[:2] == ["make demo", "make test"]


def test_ci_runs_exactly_make_test():
    lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in lines
