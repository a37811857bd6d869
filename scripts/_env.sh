# Sourced by demo.sh / test.sh: use the active virtualenv, or create ./.venv, and install arjax
# with the extras in ARJAX_EXTRAS (e.g. '[test]').
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
pip_log=$(mktemp)
if ! python -m pip install -q --disable-pip-version-check -e ".${ARJAX_EXTRAS:-}" >"$pip_log" 2>&1; then
  cat "$pip_log" >&2
  echo "pip install of arjax${ARJAX_EXTRAS:-} failed (log above)" >&2
  exit 1
fi
rm -f "$pip_log"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
# shellcheck disable=SC1091
source scripts/_tcmalloc.sh
