"""Helpers of scripts/board/emulate.sh, host side and board side.

    board.py prepare DIR              (host, TensorFlow) a tiny trained-free model: model.keras, its int8
                                      export, probe inputs and the host's outputs of the int8 probe model
    board.py outputs MODEL IN OUT     (board, device only) the probe model's outputs on the inputs, .npz
    board.py compare HOST BOARD       (host) max |board - host| over every output, as JSON
    board.py verdicts REPORT          (host) whether the board's check verdict matches the host's, as JSON
                                      (report of a check on a host agent, then the board's agent)
    board.py junit XML                (host) {tests_passed, tests_failed} of a pytest JUnit file, as JSON
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

SIZE = 32


def prepare(out: Path) -> None:
    """The model the board is compared on and the host's outputs of it with XNNPACK and with the
    reference kernels; what ``out`` holds already is kept."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from device.files import npz_bytes, write_atomic
    from device.runtime import Runtime

    probe = out / "export" / "model.int8.probe.tflite"
    if not probe.is_file():
        import keras

        from toolkit.data import synthesize
        from toolkit.export import export_model
        from toolkit.modelfile import save_face_model
        from toolkit.zoo import get_model

        keras.utils.set_random_seed(0)
        model = get_model("tiny", input_size=SIZE, embedding_dim=16)
        model_path = save_face_model(model, out / "model.keras")
        faces = synthesize(out / "faces", identities=8, images_per_identity=6, size=SIZE, seed=0,
                           progress=False)
        export_model(model_path, out / "export", variants=["int8"], calibration=faces, calibration_size=32)
        inputs = np.random.default_rng(0).uniform(-0.9, 0.9, (8, SIZE, SIZE, 3)).astype(np.float32)
        np.save(out / "inputs.npy", inputs)
    for kernels, name in (("xnnpack", "host_outputs.npz"), ("reference", "host_outputs_reference.npz")):
        if not (out / name).is_file():
            values = Runtime(probe, kernels=kernels).run(np.load(out / "inputs.npy"))
            write_atomic(out / name, npz_bytes(values))


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
    commands = {"prepare": lambda a: prepare(Path(a[0])), "outputs": lambda a: outputs(*a),
                "compare": lambda a: compare(*a), "verdicts": lambda a: verdicts(*a),
                "junit": lambda a: junit(*a)}
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    commands[argv[0]](argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
