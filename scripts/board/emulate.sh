#!/usr/bin/env bash
# The board half on an emulated Raspberry Pi: a Debian bookworm arm64 root file system (the base of
# Raspberry Pi OS 64-bit: Python 3.11, glibc 2.36) run under QEMU user-mode emulation, with the
# project installed twice, `.[device]` (ai-edge-litert) and `.[device-legacy]` (tflite-runtime 2.14,
# numpy < 2), from real aarch64 wheels. In each it runs the device tests, compares a real int8 probe
# model's outputs with the host's, and serves an agent that the host's `faceprobe check --agent`
# talks to over loopback, comparing the board's verdict with the host's. The model is the tiny one trained
# on synthetic faces (it verifies them; the check refuses to judge a model that does not). Any step that
# fails (a device test, the check, a verdict that differs from the host's) makes the exit code non-zero,
# after the JSON.
#
#   PYTHON=.venv/bin/python scripts/board/emulate.sh [--json]   (root; Debian host with apt; network
#                                                                for the set-up)
#
# Set-up is cached outside the checkout in $FACEPROBE_BOARD_CACHE (default ~/.cache/faceprobe-board):
# qemu-user-static and debootstrap are installed with apt when missing, the root file system is
# bootstrapped once (minutes), wheels are downloaded once. QEMU_CPU must name a real core
# ($FACEPROBE_BOARD_CPU, default cortex-a72 ~ Pi 4; cortex-a76 ~ Pi 5): QEMU's default "max"
# advertises SME and XNNPACK's int8 results are then wrong. The board sees an ARM /proc/cpuinfo of
# that core: without one XNNPACK silently does not start, with the host's x86 one it crashes.
# QEMU user mode does not pass address-space limits on to the host, so the agent's sandbox keeps
# only its time limit here; the hardening tests that need the memory limit are left out.
set -euo pipefail
JSON=0
[ "${1:-}" = "--json" ] && JSON=1
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${FACEPROBE_BOARD_CACHE:-$HOME/.cache/faceprobe-board}
CPU=${FACEPROBE_BOARD_CPU:-cortex-a72}
RFS=$CACHE/rootfs
PY=${PYTHON:-python3}  # the host's Python with the project's host dependencies (TensorFlow)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
LOG=$CACHE/log
PORT=${FACEPROBE_BOARD_PORT:-18765}
mkdir -p "$CACHE" "$LOG"
say() { if [ $JSON = 1 ]; then echo "$*" >&2; else echo "$*"; fi; }

# --- 1. host tools --------------------------------------------------------------------------------
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  say "installing qemu-user-static and debootstrap (apt)"
  apt-get update -qq >"$LOG/apt.log" 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static debootstrap >>"$LOG/apt.log" 2>&1
fi

# --- 2. binfmt_misc, so that a chroot runs arm64 binaries through qemu --------------------------
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register

# --- 3. the root file system (debootstrap: stage 1 on the host, stage 2 emulated) -----------------
MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [ ! -e "$RFS/.complete" ]; then
  say "bootstrapping Debian bookworm arm64 into $RFS"
  rm -rf "$RFS"
  debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$RFS" ${MIRROR:+"$MIRROR"} >"$LOG/debootstrap1.log" 2>&1
  chroot "$RFS" /debootstrap/debootstrap --second-stage >"$LOG/debootstrap2.log" 2>&1
  rm -f "$RFS"/var/cache/apt/archives/*.deb
  touch "$RFS/.complete"
fi

# --- 4. an ARM /proc/cpuinfo of the chosen core, and the mounts -----------------------------------
case "$CPU" in
  cortex-a72) FEAT="fp asimd evtstrm crc32 cpuid"; VAR=0x0; PART=0xd08; REV=3;;
  cortex-a76) FEAT="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
              VAR=0x4; PART=0xd0b; REV=1;;
  *) echo "FACEPROBE_BOARD_CPU must be cortex-a72 or cortex-a76, got $CPU" >&2; exit 2;;
esac
: > "$CACHE/cpuinfo_$CPU"
for p in $(seq 0 $(($(nproc) - 1))); do
  printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
    "$p" "$FEAT" "$VAR" "$PART" "$REV" >> "$CACHE/cpuinfo_$CPU"
done
mountpoint -q "$RFS/proc" || mount -t proc proc "$RFS/proc"
grep -q " $RFS/proc/cpuinfo " /proc/self/mounts || mount --bind "$CACHE/cpuinfo_$CPU" "$RFS/proc/cpuinfo"
# /sys too: XNNPACK's cpuinfo reads the present processors there, and without them it is not applied.
mountpoint -q "$RFS/sys" || { mount --rbind /sys "$RFS/sys"; mount --make-rslave "$RFS/sys"; }
mountpoint -q "$RFS/dev" || mount --bind /dev "$RFS/dev"
mountpoint -q "$RFS/dev/shm" || mount -t tmpfs tmpfs "$RFS/dev/shm"
cleanup() {
  if [ -n "${AGENT_PID:-}" ]; then kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; fi
  umount "$RFS/proc/cpuinfo" "$RFS/proc" "$RFS/dev/shm" "$RFS/dev" 2>/dev/null || true
  umount -R "$RFS/sys" 2>/dev/null || true
}
trap cleanup EXIT
board() { chroot "$RFS" /usr/bin/env -u PYTHONPATH QEMU_CPU="$CPU" HOME=/root "$@"; }

# --- 5. wheels: aarch64 runtimes and numpy (cached), the project (built now) ----------------------
LITERT=$($PY -c 'from importlib.metadata import version; print(version("ai-edge-litert"))')
PLATFORMS="--platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux_2_34_aarch64"
declare -A REQ=([ai-edge-litert]="ai-edge-litert==$LITERT" [tflite-runtime]="tflite-runtime==2.14.0 numpy<2")
declare -A EXTRA=([ai-edge-litert]=device [tflite-runtime]=device-legacy)
for name in ai-edge-litert tflite-runtime; do
  if [ ! -e "$CACHE/wheels/$name/.complete" ]; then
    say "downloading aarch64 wheels for $name"
    mkdir -p "$CACHE/wheels/$name"
    # shellcheck disable=SC2086
    $PY -m pip download -q --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 $PLATFORMS \
      -d "$CACHE/wheels/$name" ${REQ[$name]} pytest >"$LOG/wheels-$name.log" 2>&1
    touch "$CACHE/wheels/$name/.complete"
  fi
done
rm -rf "$RFS/opt/project" && mkdir -p "$RFS/opt/project"
$PY -m pip wheel -q --no-deps --no-build-isolation -w "$RFS/opt/project" "$ROOT" >"$LOG/project-wheel.log" 2>&1
cp -r "$ROOT/tests" "$RFS/opt/project/tests"
cp "$ROOT/scripts/board/board.py" "$RFS/opt/project/"

# --- 6. the host's side of the comparison (TensorFlow; cached) ------------------------------------
say "preparing the host's reference"
$PY "$ROOT/scripts/board/board.py" prepare "$CACHE/host" >"$LOG/prepare.log" 2>&1
mkdir -p "$RFS/opt/ref"
cp "$CACHE/host/export/model.int8.probe.tflite" "$CACHE/host/export/model.int8.probe.manifest.json" \
   "$CACHE/host/inputs.npy" "$RFS/opt/ref/"

# --- 7. each runtime: a venv, the device tests, the int8 outputs, an agent checked from the host ---
# The device tests (those that need no TensorFlow); $FACEPROBE_BOARD_TESTS adds more, e.g. the
# hardening tests (~10x slower emulated), less the two that need the memory limit QEMU does not apply.
DEVICE_TESTS="tests/test_plan_contract.py tests/test_agent_server.py tests/test_remote_client.py ${FACEPROBE_BOARD_TESTS:-}"
DESELECT="not sandbox_reports_memory and not too_much_memory"
RESULTS="{}"
MAXDIFF=0
MATCHES=true
FAILED=
ARCH=$(board /usr/bin/python3 -c 'import platform; print(platform.machine())')
for name in ai-edge-litert tflite-runtime; do
  venv=/opt/venv-$name
  if [ ! -x "$RFS$venv/bin/python" ]; then
    say "creating $venv on the board"
    board /usr/bin/python3 -m venv "$venv" >"$LOG/venv-$name.log" 2>&1
  fi
  rm -rf "$RFS/opt/wheels" && mkdir -p "$RFS/opt/wheels" && cp "$CACHE/wheels/$name"/*.whl "$RFS/opt/wheels/"
  say "installing .[${EXTRA[$name]}] on the board ($name)"
  wheel=$(cd "$RFS/opt/project" && ls faceprobe-*.whl)
  board "$venv/bin/pip" install -q --no-index --find-links /opt/wheels \
    "/opt/project/$wheel[${EXTRA[$name]}]" pytest >"$LOG/install-$name.log" 2>&1
  board "$venv/bin/pip" install -q --no-index --no-deps --force-reinstall "/opt/project/$wheel" \
    >>"$LOG/install-$name.log" 2>&1
  say "device tests on the board ($name)"
  board /usr/bin/env -C /opt/project "$venv/bin/python" -m pytest -q -p no:cacheprovider $DEVICE_TESTS \
    -k "$DESELECT" --junitxml="/opt/junit-$name.xml" >"$LOG/tests-$name.log" 2>&1 \
    || FAILED="$FAILED device-tests-$name"
  counts=$($PY "$ROOT/scripts/board/board.py" junit "$RFS/opt/junit-$name.xml")
  board "$venv/bin/python" /opt/project/board.py outputs /opt/ref/model.int8.probe.tflite /opt/ref/inputs.npy \
    "/opt/out-$name.npz" >"$LOG/outputs-$name.log" 2>&1
  diff=$($PY "$ROOT/scripts/board/board.py" compare "$CACHE/host/host_outputs.npz" "$RFS/opt/out-$name.npz" \
         | $PY -c 'import json,sys; print(json.load(sys.stdin)["max_abs_diff"])')
  MAXDIFF=$($PY -c "print(max($MAXDIFF, $diff))")
  # Against the host's reference kernels too: where the board differs from the host's XNNPACK, this
  # tells a runtime's own int8 kernel path from an emulation fault.
  diff_ref=$($PY "$ROOT/scripts/board/board.py" compare "$CACHE/host/host_outputs_reference.npz" \
             "$RFS/opt/out-$name.npz" | $PY -c 'import json,sys; print(json.load(sys.stdin)["max_abs_diff"])')

  say "an agent on the board ($name), checked from the host"
  rm -rf "$RFS/opt/store" && echo "board-emulation-token" > "$RFS/opt/token"
  # Not through board(): a function in the background is a subshell, and its PID is not the agent's.
  chroot "$RFS" /usr/bin/env -u PYTHONPATH QEMU_CPU="$CPU" HOME=/root "$venv/bin/faceprobe-agent" serve \
    --port "$PORT" --store /opt/store --token-file /opt/token >"$LOG/agent-$name.log" 2>&1 &
  AGENT_PID=$!
  for _ in $(seq 1 120); do
    grep -q listening "$LOG/agent-$name.log" && break
    sleep 1
  done
  # The same agent natively on the host: boards and host then judge through the same code path (a
  # board's identities come from its probe model, the host's own column from the deploy model).
  rm -rf "$CACHE/check-$name" "$CACHE/host-store"
  $PY -m device.cli serve --port "$((PORT + 1))" --store "$CACHE/host-store" --token-file "$RFS/opt/token" \
    >"$LOG/host-agent-$name.log" 2>&1 &
  HOST_AGENT_PID=$!
  for _ in $(seq 1 60); do
    grep -q listening "$LOG/host-agent-$name.log" && break
    sleep 1
  done
  # Exit 0 or 1 is a verdict; anything else (2: could not judge) is a failed step (log: check-$name.log).
  verdict=$($PY "$ROOT/scripts/board/board.py" check "$CACHE/host" \
            "http://127.0.0.1:$((PORT + 1)),http://127.0.0.1:$PORT" board-emulation-token "$CACHE/check-$name" \
            2>>"$LOG/check-$name.err") || FAILED="$FAILED check-$name"
  cp "$CACHE/check-$name.log" "$LOG/check-$name.log" 2>/dev/null || true
  kill "$AGENT_PID" "$HOST_AGENT_PID" 2>/dev/null || true
  wait "$AGENT_PID" "$HOST_AGENT_PID" 2>/dev/null || true
  AGENT_PID=
  [ "$($PY -c "import json,sys; print(json.loads(sys.argv[1])['matches'])" "$verdict")" = True ] || MATCHES=false
  RESULTS=$($PY -c "import json,sys; r=json.loads(sys.argv[1]); r[sys.argv[2]]={**json.loads(sys.argv[3]), 'int8_max_abs_diff_vs_host': float(sys.argv[4]), 'int8_max_abs_diff_vs_host_reference_kernels': float(sys.argv[6]), 'check': json.loads(sys.argv[5])}; print(json.dumps(r))" \
            "$RESULTS" "$name" "$counts" "$diff" "$verdict" "$diff_ref")
done

OUT=$($PY -c "import json,sys; print(json.dumps({'arch': sys.argv[1], 'cpu': sys.argv[2], 'runtimes': json.loads(sys.argv[3]), 'int8_max_abs_diff_vs_host': float(sys.argv[4]), 'check_verdict_matches_host': sys.argv[5] == 'true'}, indent=2))" \
      "$ARCH" "$CPU" "$RESULTS" "$MAXDIFF" "$MATCHES")
echo "$OUT"
[ $JSON = 1 ] || echo "logs: $LOG"
[ "$MATCHES" = true ] || FAILED="$FAILED verdicts-differ"
if [ -n "$FAILED" ]; then
  echo "emulate.sh: failed:$FAILED (logs: $LOG)" >&2
  exit 1
fi
