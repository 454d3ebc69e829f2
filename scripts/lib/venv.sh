# shellcheck shell=bash
# Sourced by the scripts that need Python tools (scripts/test: moto;
# scripts/validate-template: cfn-lint, SAM; scripts/fuzz: Schemathesis).
# Each tool set lives in its own project-local virtual environment,
# .venv/NAME at the repository root (git-ignored), made on first use with the
# `python3` on PATH from scripts/requirements-NAME.txt (exact versions), and
# made again when that file changes or the environment no longer runs. Nothing
# is installed into the system's Python (Debian 12's refuses `pip install`:
# "externally-managed-environment").
#
#   . scripts/lib/venv.sh
#   venv_ensure test            # sets VENV=.venv/test
#   "$VENV/bin/moto_server" ...
#
# Needs: python3 with its venv module (Debian/Ubuntu: apt install python3-venv)
# and PyPI, the first time only. The caller has cd'ed to the repository root.

venv_ensure() {
  local name="$1"
  local requirements="scripts/requirements-$name.txt"
  local dir=".venv/$name"
  # shellcheck disable=SC2034 # read by the scripts that source this file
  VENV="$dir"
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c '' >/dev/null 2>&1 &&
    cmp -s "$requirements" "$dir/requirements.txt"; then
    return 0
  fi

  if ! command -v python3 >/dev/null 2>&1; then
    echo "python3 is not installed: install it with its venv module (Debian/Ubuntu: apt install python3 python3-venv)" >&2
    exit 2
  fi
  # Debian ships `venv` without `ensurepip` unless python3-venv is installed,
  # and `python3 -m venv` then fails half-way; ask for the package up front.
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "$(command -v python3) cannot make virtual environments (no venv/ensurepip module): install python3-venv (Debian/Ubuntu: apt install python3-venv), then run this again" >&2
    exit 2
  fi

  echo "making $dir from $requirements ($(python3 --version 2>&1); first use, or the file changed: a minute or two from PyPI)"
  rm -rf "$dir"
  mkdir -p .venv
  if ! python3 -m venv "$dir" ||
    ! "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"; then
    echo "could not install $requirements into $dir (see pip's message above); removed it so the next run starts over" >&2
    rm -rf "$dir"
    exit 1
  fi
  # The copy marks the environment complete and tells a later run whether the
  # requirements changed since.
  cp "$requirements" "$dir/requirements.txt"
}
