#!/usr/bin/env bash
# The pre-release quantization check, as a CI pipeline calls it:
#   scripts/prerelease_check.sh MODEL.keras [faceprobe check options: --variant, --data, --agent, --thresholds ...]
# Writes the report to runs/prerelease (or --out DIR) and passes faceprobe check's exit code through:
# 0 = the quantized model keeps the features, 1 = it does not, 2 = the check could not run.
if [ $# -lt 1 ]; then
  echo "usage: $0 MODEL.keras [faceprobe check options]" >&2
  exit 2
fi
source "$(dirname "$0")/_venv.sh"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
MODEL="$1"
shift
# A later --out among the options overrides this default; --force replaces the previous run's report.
exec faceprobe check "$MODEL" --out runs/prerelease --force "$@"
