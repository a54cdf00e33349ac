"""The pre-release quantization check: does the quantized model on the board keep the features?

    from toolkit.check import CheckOptions, exit_code, run_check

    report = run_check("runs/orl/model.keras", "runs/orl/check",
                       options=CheckOptions(data="faces/test", search="never"))
    report["verdict"], exit_code(report)   # "pass" / "fail" / "inconclusive"; 0 / 1 / 2

``run_check`` (and the boards and levels behind it) load TensorFlow on first use; the options, the
thresholds and the verdict's exit code do not.
"""

from __future__ import annotations

from .gate import DEFAULT_THRESHOLDS, EXIT_CODES, Verdict, exit_code, load_thresholds
from .options import SEARCH_MODES, CheckOptions

__all__ = ["DEFAULT_THRESHOLDS", "EXIT_CODES", "SEARCH_MODES", "BoardResult", "CheckOptions", "Verdict",
           "exit_code", "load_thresholds", "run_check"]


def __getattr__(name: str):
    if name == "run_check":
        from .runner import run_check

        return run_check
    if name == "BoardResult":
        from .judging import BoardResult

        return BoardResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
