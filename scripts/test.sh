#!/usr/bin/env bash
# The whole test suite (CPU; Pallas kernels in interpret mode; 8 fake devices where a test asks).
ARJAX_EXTRAS="[test]" source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
python -m pytest tests -q -n 2 --durations=15 "$@"
