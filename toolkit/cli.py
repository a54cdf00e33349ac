"""`faceprobe`: one CLI whose subcommands mirror the flow (data, train, evaluate, probe, export, check,
bench, deploy, report). Each subcommand lives in toolkit/commands/<name>.py with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from device import console

from .remote import AgentError

COMMANDS = ("data", "train", "derive", "evaluate", "probe", "export", "check", "bench", "deploy", "report",
            "import")
# Subcommand -> module where the name is a Python keyword.
MODULES = {"import": "imports"}
COMMAND_ATTRS = ("command", "data_command")  # the attributes naming the subcommand (and its action)

EXAMPLES = {
    "": """faceprobe data synth --out faces --identities 20 --images 12
faceprobe train --recipe models/tiny-synth.toml --data faces --out runs/tiny
faceprobe probe runs/tiny/model.keras --images faces --out runs/tiny/probe
faceprobe check runs/tiny/model.keras --variant int8 --out runs/tiny/check""",
    "data synth": "faceprobe data synth --out faces --identities 20 --images 12 --size 64",
    "data inspect": """faceprobe data inspect faces
faceprobe data inspect photos --crop --json""",
    "train": """faceprobe train --recipe models/tiny-synth.toml --out runs/tiny
faceprobe train --recipe models/mobilefacenet-orl.toml --data att_faces --identities s1-s30 --out runs/orl
faceprobe train --out runs/tiny --resume                 # continue after Ctrl-C or a crash
faceprobe train --recipe models/tiny-synth.toml --out runs/t2 --set margin=0.3 --epochs 5""",
    "derive": """faceprobe derive runs/dlib/model.keras --data att_faces --identities s1-s30 --align \\
    --recipe models/dlib-compact.toml --out runs/dlib-compact
faceprobe derive runs/orl/model.keras --data att_faces --identities s1-s30 --macs 60M --dry-run
faceprobe derive runs/tiny/model.keras --params 100k --epochs 3 --out runs/tiny-small
faceprobe derive runs/dlib/model.keras --out runs/dlib-compact --resume""",
    "evaluate": """faceprobe evaluate runs/tiny/model.keras --data unseen-faces
faceprobe evaluate runs/orl/model.keras --data att_faces --roc roc.png --out eval.json --json""",
    "probe": """faceprobe probe runs/tiny/model.keras --images faces --out runs/tiny/probe
faceprobe probe runs/tiny/model.keras --taps first last --channels 0,3 --step-rule normalized --out p2
faceprobe probe runs/tiny/model.keras --invariance --data unseen-faces --json
faceprobe probe model_float32.tflite --images faces --step-rule normalized --out p3""",
    "export": """faceprobe export runs/tiny/model.keras --out runs/tiny/export
faceprobe export runs/tiny/model.keras --variants int8 --calibration faces --out runs/tiny/int8""",
    "check": """faceprobe check runs/tiny/model.keras --variant int8 --out runs/tiny/check
faceprobe check runs/orl/model.keras --data att_faces --identities s31-s40 --calibration att_faces \\
    --calibration-identities s1-s30 --agent http://pi.local:8765 --out runs/orl/check
faceprobe check --float model_float32.tflite --quantized model_int8.tflite --data att_faces --out x/check""",
    "bench": """faceprobe bench runs/tiny/export/model.int8.tflite runs/tiny/export/model.float32.tflite
faceprobe bench runs/tiny/export/model.*.tflite --agent http://pi.local:8765 --threads 4 --json""",
    "deploy": "faceprobe deploy runs/tiny/export/model.int8.probe.tflite --agent http://pi.local:8765",
    "report": """faceprobe report runs/tiny/probe
faceprobe report runs/tiny/check""",
    "import": """faceprobe import dlib --out dlib.keras
faceprobe import my_model.keras --out imported.keras --tap block1_bn --tap block5_bn
faceprobe import model_float32.tflite --mean 127.5 --scale 127.5 --channels rgb""",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faceprobe",
        description="Train, probe, export and check compact face-recognition CNNs for TFLite boards.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"toolkit.commands.{MODULES.get(name, name)}").add_parser(sub)
    console.finish_parser(parser, console.package_version(), EXAMPLES)
    return parser


def quiet_libraries(verbose: bool) -> None:
    """Before TensorFlow is imported: keep its C++ and absl logging to errors unless ``--verbose``.

    What native code still prints to stderr is hidden by ``console.quiet_native_stderr``; numerics are
    left alone (oneDNN stays on: only its notice goes).
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    import logging

    for name in ("tensorflow", "absl", "keras"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


def interrupt_hint(args: argparse.Namespace) -> str:
    """What to do after Ctrl-C: training resumes; everything else wrote nothing and is simply rerun."""
    if args.command == "train":
        return f"continue with `faceprobe train --out {args.out} --resume`"
    out = getattr(args, "out", None)
    return f"nothing was written{f' to {out}' if out else ''}; run the same command again"


# Arguments that name a command's inputs: none may lie inside the output folder it replaces.
INPUT_ARGS = ("model", "plan", "images", "data", "calibration", "quantized", "float", "thresholds", "pairs",
              "tflite")


def dispatch(args: argparse.Namespace) -> int:
    """Run the command; one that declares ``outputs`` (the files that mark its output folder) writes into
    ``--out`` through ``atomic.output_dir``: refused when it holds something unless --force, never mixed."""
    markers = getattr(args, "outputs", None)
    if not markers or not getattr(args, "out", None):
        return args.run(args)
    from .atomic import output_dir

    inputs = [p for name in INPUT_ARGS for p in _as_list(getattr(args, name, None))]
    with output_dir(args.out, args.force, markers, console.command_name("faceprobe", args, COMMAND_ATTRS),
                    inputs=inputs):
        return args.run(args)


def _as_list(value) -> list:
    """The paths in an argument's value (e.g. `data synth --images` is a count, not a path)."""
    values = value if isinstance(value, list | tuple) else [value]
    return [v for v in values if isinstance(v, str | os.PathLike)]


def main(argv: list[str] | None = None) -> int:
    return console.run_cli("faceprobe", build_parser(), argv, dispatch,
                           command_attrs=COMMAND_ATTRS, interrupt_hint=interrupt_hint,
                           own=[Path(__file__).parent], expected=(*console.EXPECTED_ERRORS, AgentError),
                           before=quiet_libraries)


if __name__ == "__main__":
    sys.exit(main())
