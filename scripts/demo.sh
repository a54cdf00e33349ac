#!/usr/bin/env bash
# The faceprobe demo, start to finish on synthetic faces (no dataset needed):
#   synthesise faces -> train a tiny face CNN -> verification table -> gradient-ascent probe + HTML report
#   -> int8 TFLite export -> a board agent on loopback (separate process) -> the pre-release check on it
#   -> when it fails, the cheapest passing recipe from its fix search, exported and checked again: a
#   model to ship (or an honest "no recipe passes"), and the board's own clock decides between the kept
#   quantized file and float32: the demo ends in the file both kept and fastest where it was judged.
# Everything lands in runs/demo/ (or the folder given as $1).
source "$(dirname "$0")/_venv.sh"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
RUN="${1:-runs/demo}"
MODEL="$RUN/train/model.keras"
# Every step refuses to overwrite its outputs: a second demo goes into a fresh folder.
if [ -n "$(ls -A "$RUN" 2>/dev/null)" ]; then
  echo "demo: $RUN already holds a run; remove it (rm -r $RUN) or give another folder: scripts/demo.sh runs/demo2" >&2
  exit 2
fi
mkdir -p "$RUN"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/8 synthetic faces: 20 people to train on, 10 unseen people to evaluate on"
faceprobe data synth --out "$RUN/faces-train" --identities 20 --images 12 --size 64 --seed 0
faceprobe data synth --out "$RUN/faces-eval" --identities 10 --images 8 --size 64 --seed 1

step "2/8 train (models/tiny-synth.toml), probing the stages every 20 iterations"
faceprobe train --recipe models/tiny-synth.toml --data "$RUN/faces-train" --out "$RUN/train" --probe-every 20

step "3/8 open-set verification on the unseen people"
faceprobe evaluate "$MODEL" --data "$RUN/faces-eval"

step "4/8 gradient-ascent probe: 5 channels x first/middle/last stage, 20 steps, alpha 1.0"
faceprobe probe "$MODEL" --images "$RUN/faces-eval" --out "$RUN/probe"

step "5/8 export: deploy + probe TFLite, float32 and int8, calibrated on training faces"
faceprobe export "$MODEL" --variants float32,int8 --calibration "$RUN/faces-train" --out "$RUN/export"

step "6/8 a board agent on loopback, in its own process, holding the int8 probe model"
PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
faceprobe-agent serve --host 127.0.0.1 --port "$PORT" --store "$RUN/agent-store" > "$RUN/agent.log" 2>&1 &
AGENT_PID=$!
trap 'kill "$AGENT_PID" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" \
    2>/dev/null && break
  sleep 0.2
done
faceprobe deploy --agent "http://127.0.0.1:$PORT" "$RUN/export/model.int8.probe.tflite"

step "7/8 pre-release check of the int8 model, on the host interpreter and on the board agent"
# A failing check runs the fix search itself: recipes in order of cost, the cheapest passing one
# written to $RUN/check/search/recipe.toml.
set +e
faceprobe check "$MODEL" --quantized "$RUN/export/model.int8.tflite" --data "$RUN/faces-eval" \
  --calibration "$RUN/faces-train" --agent "http://127.0.0.1:$PORT" --out "$RUN/check"
VERDICT=$?
set -e
# 0 pass, 1 fail (a verdict, which the demo goes on to fix); anything else is an error.
[ "$VERDICT" -le 1 ] || exit "$VERDICT"

step "8/8 a model to ship"
SHIP="$RUN/export/model.int8.tflite"
REPORT="$RUN/check/report.html"
if [ "$VERDICT" -eq 1 ]; then
  RECIPE="$RUN/check/search/recipe.toml"
  if [ ! -f "$RECIPE" ]; then
    echo "No recipe passes: the fix search's table above lists every recipe tried. Nothing to ship."
    exit 1
  fi
  echo "Exporting the cheapest passing recipe ($RECIPE) and checking it again, on the host and the board:"
  cat "$RECIPE"
  faceprobe export "$MODEL" --recipe "$RECIPE" --calibration "$RUN/faces-train" --out "$RUN/export-fixed"
  SHIP="$(ls "$RUN"/export-fixed/model.*.tflite | grep -v '\.probe\.tflite$' | head -n 1)"
  faceprobe check "$MODEL" --quantized "$SHIP" --data "$RUN/faces-eval" --agent "http://127.0.0.1:$PORT" \
    --search never --out "$RUN/check-fixed"
  REPORT="$RUN/check-fixed/report.html"
fi

# The check timed the kept file beside float32 on the board (interleaved there): ship the faster one.
SHIP="$(python - "${REPORT%.html}.json" "$SHIP" "$RUN/export/model.float32.tflite" <<'PY'
import json, sys
report, kept, float32 = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
board = report["boards"][-1]
speed = board["speed"]
line = (f"on {board['name']}: {report['summary']['variant']} {speed['latency_ms']:.3f} ms, float32 "
        f"{speed['float32_latency_ms']:.3f} ms at batch 1 ({speed['speedup_b1']:.2f}x)")
if speed["speedup_b1"] >= 1.0:
    print(f"The kept file is also the faster one {line}.", file=sys.stderr)
    print(kept)
else:
    print(f"float32 is the faster file to ship on this machine: {line}. The quantized file keeps the "
          "features; ship it on a board whose own figures (faceprobe bench --agent URL) say it is faster.",
          file=sys.stderr)
    print(float32)
PY
)"

printf '\nDemo outputs in %s:\n  probe report  %s\n  check report  %s\n  model to ship %s\n' "$RUN" \
  "$RUN/probe/report.html" "$REPORT" "$SHIP"
