# Sourced by demo.sh / test.sh: use the active virtualenv, or create ./.venv, and install arjax.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -vE '^(WARNING|  )|^$' || true
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
