"""The README's promises that a test can hold it to (the quick start itself runs in test_wheel.py)."""

from __future__ import annotations

import re
from pathlib import Path

from craft_plugin.config import config_reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_configuration_reference_matches_the_schema():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->", text, re.S)
    assert m, "docs/configuration.md lacks the config-reference markers"
    assert m.group(1) == config_reference_markdown(), "the config reference is stale: run `craft config --markdown`"


def test_first_two_commands_are_make_demo_and_make_test():
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands[:2] == ["make demo", "make test"]


def test_ci_runs_exactly_make_test():
    lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in lines


def test_readme_is_short():
    assert len(README.splitlines()) <= 250


def test_every_local_link_of_the_readme_and_docs_resolves():
    broken = []
    for doc in [ROOT / "README.md", *DOCS]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://", target) or target.startswith("#"):
                continue
            if not (doc.parent / target.split("#")[0]).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken
    linked = set(re.findall(r"\]\(docs/([^)#]+)\)", README))
    assert linked == {d.name for d in DOCS}, "every page of docs/ is linked from the README"


def quickstart_commands() -> list[str]:
    """The README's quick-start block: one string per command (continuation lines joined, comments dropped)."""
    m = re.search(r"<!-- quickstart:start -->\n```bash\n(.*?)```\n<!-- quickstart:end -->", README, re.S)
    assert m, "README lacks the quickstart markers"
    commands, current = [], ""
    for line in m.group(1).splitlines():
        line = line.split("  #")[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


def test_the_quickstart_is_what_test_wheel_runs():
    names = [c.split()[0] for c in quickstart_commands()]
    assert names == ["python", "craft", "lerobot-train", "craft", "craft"]
