# shellcheck shell=bash
# Sourced (not executed) by scripts/test, scripts/demo and friends: make sure the repo's
# .venv exists and holds an editable install of journal with the dev extra, then put it
# first on PATH. Written once here so every script bootstraps the same way.
#
# Re-installs only when needed: when the venv is missing or broken (e.g. its python was
# upgraded away), or when pyproject.toml is newer than .venv/.journal-stamp (deps changed).
#
# Knobs: JOURNAL_PYTHON (interpreter used to create the venv, default python3),
#        JOURNAL_VENV (venv location, default <repo>/.venv).

JOURNAL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JOURNAL_VENV="${JOURNAL_VENV:-$JOURNAL_ROOT/.venv}"

_journal_venv_bootstrap() {
    local python="${JOURNAL_PYTHON:-python3}"
    local stamp="$JOURNAL_VENV/.journal-stamp"

    if ! "$JOURNAL_VENV/bin/python" -c '' >/dev/null 2>&1; then
        if ! command -v "$python" >/dev/null 2>&1; then
            echo "error: $python not found; install Python >= 3.11 or set JOURNAL_PYTHON" >&2
            return 1
        fi
        if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "error: journal needs Python >= 3.11; $python is $("$python" -V 2>&1)." \
                "Set JOURNAL_PYTHON to a newer interpreter." >&2
            return 1
        fi
        echo "==> creating $JOURNAL_VENV"
        # --clear: a half-built or dangling venv is rebuilt from scratch.
        "$python" -m venv --clear "$JOURNAL_VENV" || return 1
        rm -f "$stamp"
    fi

    if [[ ! -f "$stamp" || "$JOURNAL_ROOT/pyproject.toml" -nt "$stamp" ]]; then
        echo "==> pip install -e '.[dev]'"
        # -q hides progress chatter but keeps warnings and errors.
        # editable_mode=compat: a plain path entry instead of setuptools' import hook. The
        # repository folder is called journal too; from its parent directory Python would
        # otherwise import that folder as a namespace package ("cannot import name ...
        # (unknown location)"), because the hook only runs after the path search.
        "$JOURNAL_VENV/bin/python" -m pip install -q --disable-pip-version-check \
            --config-settings editable_mode=compat -e "$JOURNAL_ROOT[dev]" || return 1
        # Touched only after a successful install, so a failed one is retried next time.
        touch "$stamp"
    fi
}

_journal_venv_bootstrap || return 1
unset -f _journal_venv_bootstrap

export JOURNAL_ROOT JOURNAL_VENV
export VIRTUAL_ENV="$JOURNAL_VENV"
export PATH="$JOURNAL_VENV/bin:$PATH"
