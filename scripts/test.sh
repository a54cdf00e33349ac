#!/usr/bin/env bash
# Run the test suite (fast tests by default; pass `-m slow` for the long end-to-end ones).
source "$(dirname "$0")/_venv.sh"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec python -m pytest "$@"
