#!/usr/bin/env bash
# The pre-release quantization check, as a CI pipeline calls it:
#   scripts/prerelease_check.sh MODEL.keras [faceprobe check options: --recipe, --data, --agent, --thresholds ...]
# Writes the report to runs/prerelease (or --out DIR) and exits with the verdict:
# 0 = the quantized model keeps the features, 1 = it does not, 2 = the check could not judge (bad input,
# a file from another model, an unreachable board, faces the float model cannot verify, any error).
# Exit 1 is passed on only when this run wrote a report whose verdict is "fail": a crash that exits 1
# (an import error, say) must never read as a quantization failure.
if [ $# -lt 1 ]; then
  echo "usage: $0 MODEL.keras [faceprobe check options]" >&2
  exit 2
fi
source "$(dirname "$0")/_venv.sh"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
MODEL="$1"
shift
OUT=runs/prerelease
prev=""
for arg in "$@"; do  # the last --out wins, as in faceprobe check
  case "$arg" in --out=*) OUT="${arg#--out=}" ;; esac
  [ "$prev" = "--out" ] && OUT="$arg"
  prev="$arg"
done
MARK="$(mktemp)"
trap 'rm -f "$MARK"' EXIT
set +e  # _venv.sh turns on errexit; the exit code is read below
faceprobe check "$MODEL" --out runs/prerelease --force "$@"
RC=$?
case "$RC" in
  0) exit 0 ;;
  1)
    if [ "$OUT/report.json" -nt "$MARK" ] && python -c 'import json, sys
sys.exit(0 if json.load(open(sys.argv[1])).get("verdict") == "fail" else 1)' "$OUT/report.json"; then
      exit 1
    fi
    echo "prerelease_check: faceprobe check exited 1 without writing a failing verdict; treating it as an error" >&2
    exit 2 ;;
  *) exit 2 ;;
esac
