"""scripts/craft-env.sh: where the environment lives and what a user without Python 3.12 sees."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "craft-env.sh"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_path_is_keyed_by_a_hash_of_the_project_files(tmp_path):
    res = _run(["path"], {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert res.returncode == 0
    fmt = next(l for l in SCRIPT.read_text().splitlines() if l.startswith("ENV_FORMAT="))
    data = f"format={fmt.split('=')[1]}\n".encode() + (ROOT / "pyproject.toml").read_bytes()
    data += (ROOT / "requirements.lock").read_bytes()
    expected = tmp_path / ".cache" / "craft-plugin" / f"venv-{hashlib.sha256(data).hexdigest()[:12]}"
    assert res.stdout.strip() == str(expected)


def test_craft_venv_overrides_the_path(tmp_path):
    res = _run(["path"], {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CRAFT_VENV": str(tmp_path / "v")})
    assert res.stdout.strip() == str(tmp_path / "v")


@pytest.mark.skipif(
    any(Path(p).exists() for p in ("/usr/bin/python3.12", "/bin/python3.12", "/usr/local/bin/python3.12")),
    reason="this machine has a system Python 3.12, so the script would find it",
)
def test_without_python_312_the_user_is_told_how_to_get_one(tmp_path):
    # PATH without pyenv, HOME without ~/.pyenv: no Python 3.12 can be found
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CRAFT_VENV": str(tmp_path / "v")}
    res = _run(["ensure"], env)
    assert res.returncode != 0
    assert "No Python 3.12 found" in res.stderr
    assert "pyenv install 3.12" in res.stderr and "CRAFT_PYTHON" in res.stderr
    assert not (tmp_path / "v").exists(), "nothing half-built is left behind"


def test_a_wrong_craft_python_is_named(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CRAFT_VENV": str(tmp_path / "v"), "CRAFT_PYTHON": "/bin/false"}
    res = _run(["ensure"], env)
    assert res.returncode != 0
    assert "CRAFT_PYTHON=/bin/false is not a working Python 3.12 interpreter" in res.stderr
