"""Helpers of scripts/board/emulate.sh, host side and board side.

    board.py prepare DIR [--quick]    (host, TensorFlow) the tiny model trained on synthetic faces (the demo's
                                      recipe, about a minute; --quick: untrained, its check's data gate
                                      opened by DIR/thresholds.toml): model.keras, its int8 export, probe
                                      inputs and the host's outputs of the int8 probe model
    board.py check DIR URLS TOKEN OUT (host) `faceprobe check` of DIR's int8 file on the agents URLS (host
                                      agent first, then the board's), then ``verdicts`` of its report;
                                      exit 2 when the check could not judge
    board.py outputs MODEL IN OUT     (board, device only) the probe model's outputs on the inputs, .npz
    board.py compare HOST BOARD       (host) max |board - host| over every output, as JSON
    board.py verdicts REPORT          (host) whether the board's check verdict matches the host's, as JSON
                                      (report of a check on a host agent, then the board's agent)
    board.py junit XML                (host) {tests_passed, tests_failed} of a pytest JUnit file, as JSON
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

SIZE = 32


ROOT = Path(__file__).resolve().parents[2]
OPEN_GATE = "[data]\nmin_float_verification_accuracy = 0.0\n"


def prepare(out: Path, quick: bool = False) -> None:
    """The model the board is compared on and the host's outputs of it with XNNPACK and with the
    reference kernels; what ``out`` holds already is kept. The model verifies the check's synthetic faces
    (the check's data gate refuses a model that does not); ``quick``: an untrained one, for a smoke run."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    from device.files import npz_bytes, write_atomic
    from device.runtime import Runtime

    probe = out / "export" / "model.int8.probe.tflite"
    if not (out / "model.path").is_file():  # written last: a folder without it holds an older preparation
        import keras

        from toolkit.data import synthesize
        from toolkit.export import Calibration, Recipe, export_model
        from toolkit.modelfile import load_face_model, save_face_model
        from toolkit.train import load_train_config, train
        from toolkit.zoo import get_model

        keras.utils.set_random_seed(0)
        if quick:
            model = get_model("tiny", input_size=SIZE, embedding_dim=16)
            model_path = save_face_model(model, out / "model.keras")
            (out / "thresholds.toml").write_text(OPEN_GATE)
        else:
            config = load_train_config(ROOT / "models" / "tiny-synth.toml")
            model_path = train(config, out / "train", progress=False, log=lambda msg: None).model_path
        size = int(load_face_model(model_path)[0].input_shape[1])
        faces = synthesize(out / "faces", identities=8, images_per_identity=6, size=size, seed=0,
                           progress=False)
        export_model(model_path, out / "export", variants=[Recipe("int8", calibration=Calibration(count=32))],
                     calibration=faces, progress=False)
        (out / "model.path").write_text(str(model_path))
        inputs = np.random.default_rng(0).uniform(-0.9, 0.9, (8, size, size, 3)).astype(np.float32)
        np.save(out / "inputs.npy", inputs)
    for kernels, name in (("xnnpack", "host_outputs.npz"), ("reference", "host_outputs_reference.npz")):
        if not (out / name).is_file():
            values = Runtime(probe, kernels=kernels).run(np.load(out / "inputs.npy"))
            write_atomic(out / name, npz_bytes(values))


def check(prepared: str, urls: str, token: str, out: str) -> int:
    """`faceprobe check` of the prepared int8 deploy file on the host and the agents ``urls``, then the
    verdicts; 2 when the check could not judge (its log is left in ``out``.log)."""
    d = Path(prepared)
    thresholds = ["--thresholds", str(d / "thresholds.toml")] if (d / "thresholds.toml").is_file() else []
    command = [sys.executable, "-m", "toolkit.cli", "check", (d / "model.path").read_text(), "--quantized",
               str(d / "export" / "model.int8.tflite"), "--agent", urls, "--token", token, "--no-features",
               "--search", "never", "--out", out, *thresholds]
    with open(f"{out}.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode
    if code not in (0, 1):
        print(json.dumps({"matches": False, "check_exit_code": code}))
        return 2
    verdicts(str(Path(out) / "report.json"))
    return 0


def outputs(model: str, inputs: str, out: str) -> None:
    from device.files import npz_bytes, write_atomic
    from device.runtime import Runtime

    runtime = Runtime(model)
    values = runtime.run(np.load(inputs))
    write_atomic(out, npz_bytes(values))
    shapes = {k: list(v.shape) for k, v in values.items()}
    print(json.dumps({"runtime": runtime.backend, "delegate_nodes": runtime.delegate_nodes, **shapes}))


def compare(host: str, board: str) -> None:
    with np.load(host) as h, np.load(board) as b:
        if sorted(h.files) != sorted(b.files):
            raise SystemExit(f"outputs differ: host {sorted(h.files)}, board {sorted(b.files)}")
        diff = max(float(np.max(np.abs(h[k] - b[k]))) for k in h.files)
    print(json.dumps({"max_abs_diff": diff}))


def verdicts(report: str) -> None:
    """The emulated board's verdict against the host's agent (same code path) and the host's own."""
    host, host_agent, board = json.loads(Path(report).read_text())["boards"]

    def failed(b: dict) -> list[str]:
        return sorted(v["name"] for v in b["verdicts"] if not v["passed"])

    def same(a: dict, b: dict) -> bool:
        return a["passed"] == b["passed"] and failed(a) == failed(b)

    print(json.dumps({"host_agent_passed": host_agent["passed"], "board_passed": board["passed"],
                      "host_deploy_passed": host["passed"], "matches": same(board, host_agent),
                      "matches_host_deploy": same(board, host)}))


def junit(xml: str) -> None:
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        print(json.dumps({"tests_passed": 0, "tests_failed": None}))
        return
    suites = [root] if root.tag == "testsuite" else list(root)
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    print(json.dumps({"tests_passed": total - failed - skipped, "tests_failed": failed,
                      "tests_skipped": skipped}))


def main(argv: list[str]) -> int:
    commands = {"prepare": lambda a: prepare(Path(a[0]), quick="--quick" in a[1:]),
                "outputs": lambda a: outputs(*a), "compare": lambda a: compare(*a),
                "verdicts": lambda a: verdicts(*a), "junit": lambda a: junit(*a),
                "check": lambda a: check(*a)}
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
