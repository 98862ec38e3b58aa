#!/usr/bin/env bash
# craft-plugin's environment manager: finds Python 3.12, keeps one virtual environment
# outside the clone, installs the locked dependencies with uv, and points the editable
# craft-plugin install at *this* clone.
#
#   scripts/craft-env.sh path     print the environment's path (creates nothing)
#   scripts/craft-env.sh ensure   create / update it, then print its path on stdout
#
# Where the environment lives:
#   $CRAFT_VENV if set, else ${XDG_CACHE_HOME:-~/.cache}/craft-plugin/venv-<hash>, where
#   <hash> is a hash of pyproject.toml, requirements.lock and ENV_FORMAT below: a second clone, CI, and later
#   sessions reuse it, and changing the dependencies makes a new one.
# Which Python:
#   $CRAFT_PYTHON if set, else `python3.12` on PATH (if it actually runs), else pyenv's 3.12.x,
#   else /usr/bin/python3.12 or /usr/local/bin/python3.12.
#
# All progress goes to stderr so `$(scripts/craft-env.sh ensure)` is just the path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/requirements.lock"
# Bump when the way the environment is built changes (it is part of the environment's hash).
ENV_FORMAT=2

log() { printf '[craft-env] %s\n' "$*" >&2; }

env_hash() {
    { echo "format=$ENV_FORMAT"; cat "$ROOT/pyproject.toml" "$LOCK" 2>/dev/null; } | sha256sum | cut -c1-12
}

venv_path() {
    if [[ -n "${CRAFT_VENV:-}" ]]; then
        printf '%s\n' "$CRAFT_VENV"
    else
        printf '%s\n' "${XDG_CACHE_HOME:-$HOME/.cache}/craft-plugin/venv-$(env_hash)"
    fi
}

is_py312() {
    "$1" -c 'import sys; raise SystemExit(0 if sys.version_info[:2] == (3, 12) else 1)' >/dev/null 2>&1
}

find_python() {
    local cand
    if [[ -n "${CRAFT_PYTHON:-}" ]]; then
        if is_py312 "$CRAFT_PYTHON"; then printf '%s\n' "$CRAFT_PYTHON"; return 0; fi
        log "CRAFT_PYTHON=$CRAFT_PYTHON is not a working Python 3.12 interpreter."
        return 1
    fi
    if command -v python3.12 >/dev/null 2>&1 && is_py312 python3.12; then
        command -v python3.12; return 0
    fi
    local pyenv_root=""
    if command -v pyenv >/dev/null 2>&1; then pyenv_root="$(pyenv root 2>/dev/null || true)"; fi
    [[ -z "$pyenv_root" && -d "$HOME/.pyenv" ]] && pyenv_root="$HOME/.pyenv"
    if [[ -n "$pyenv_root" ]]; then
        for cand in $(ls -d "$pyenv_root"/versions/3.12*/bin/python3.12 2>/dev/null | sort -rV); do
            if is_py312 "$cand"; then printf '%s\n' "$cand"; return 0; fi
        done
    fi
    for cand in /usr/local/bin/python3.12 /usr/bin/python3.12 "$HOME/.local/bin/python3.12"; do
        if [[ -x "$cand" ]] && is_py312 "$cand"; then printf '%s\n' "$cand"; return 0; fi
    done
    cat >&2 <<'MSG'
[craft-env] No Python 3.12 found. LeRobot 0.6.x needs Python >= 3.12; craft-plugin's
[craft-env] environment is built on 3.12. Get one in any of these ways, then re-run:
[craft-env]   pyenv install 3.12            (https://github.com/pyenv/pyenv)
[craft-env]   uv python install 3.12        (pip install uv), then CRAFT_PYTHON=$(uv python find 3.12)
[craft-env]   apt-get install python3.12 python3.12-venv   (Debian/Ubuntu with 3.12 packages)
[craft-env] or point CRAFT_PYTHON at an existing 3.12 interpreter.
MSG
    return 1
}

ensure() {
    local venv py stamp want
    venv="$(venv_path)"
    stamp="$venv/.craft-env-stamp"
    want="$(env_hash)"
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
        py="$(find_python)"
        log "building environment at $venv (python: $py)"
        local t0=$SECONDS
        if [[ ! -x "$venv/bin/python" ]] || ! is_py312 "$venv/bin/python"; then
            rm -rf "$venv"
            mkdir -p "$(dirname "$venv")"
            "$py" -m venv "$venv"
        fi
        if [[ ! -x "$venv/bin/uv" ]]; then
            log "installing uv into the environment"
            "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv>=0.5"
        fi
        if [[ -f "$LOCK" ]]; then
            log "installing locked dependencies from requirements.lock (cold: a few minutes; torch is large)"
            # --compile-bytecode: every later `import torch` skips recompiling thousands of files.
            "$venv/bin/uv" pip sync --compile-bytecode --python "$venv/bin/python" "$LOCK" >&2
        else
            log "no requirements.lock: resolving from pyproject.toml"
            "$venv/bin/uv" pip install --compile-bytecode --python "$venv/bin/python" -e "$ROOT[test,demo]" >&2
        fi
        "$venv/bin/uv" pip install --python "$venv/bin/python" --no-deps -e "$ROOT" -e "$ROOT/lerobot_policy_craft" >&2
        printf '%s\n' "$want" >"$stamp"
        log "environment ready in $((SECONDS - t0)) s"
    fi
    # The environment is shared between clones: make sure `craft_plugin` resolves to this one
    local here
    # (and so does `lerobot_policy_craft`, the companion distribution LeRobot auto-imports).
    here="$("$venv/bin/python" -I -c 'import importlib.util as u, os
a, b = u.find_spec("craft_plugin"), u.find_spec("lerobot_policy_craft")
print(os.path.dirname(os.path.dirname(os.path.abspath(a.origin))) if a else "", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(b.origin)))) if b else "")' 2>/dev/null || true)"
    if [[ "$here" != "$ROOT $ROOT" ]]; then
        log "pointing the editable craft-plugin installs at $ROOT"
        "$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --no-deps -e "$ROOT" -e "$ROOT/lerobot_policy_craft" >&2
    fi
    printf '%s\n' "$venv"
}

lock() {
    # Re-resolve requirements.lock (needs `uv` on PATH or an existing environment's uv).
    local uv_bin
    uv_bin="$(command -v uv || true)"
    [[ -z "$uv_bin" && -x "$(venv_path)/bin/uv" ]] && uv_bin="$(venv_path)/bin/uv"
    if [[ -z "$uv_bin" ]]; then
        log "make lock needs uv: pip install uv (or put an existing environment's bin/ on PATH)"
        return 1
    fi
    "$uv_bin" pip compile "$ROOT/pyproject.toml" --extra test --extra demo --python-version 3.12 \
        --python-platform x86_64-unknown-linux-gnu --no-header \
        --no-emit-package craft-plugin --no-emit-package lerobot-policy-craft -o "$LOCK" >&2
    log "wrote $LOCK"
}

case "${1:-ensure}" in
    path) venv_path ;;
    ensure) ensure ;;
    lock) lock ;;
    *) log "usage: $0 [path|ensure|lock]"; exit 2 ;;
esac
