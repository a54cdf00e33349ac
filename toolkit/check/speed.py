"""The check's speed level: each board times the deploy file beside the float32 deploy file (and the
prefix files of the checked recipe, for stage shares), interleaved on that board; a quantized file slower
than float32 is warned about by board, and ``[speed] min_speedup`` (0 = off) can fail the check. The fix
search's prices come from the same measurement, on the board it is told to price on."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from device.bench import BenchSpec

from ..speed import HOST, bench_agent, bench_host, speed_of, stage_shares
from .boards import Board
from .gate import Verdict, judge
from .judging import BoardResult

if TYPE_CHECKING:
    from ..remote import Trust

SPEC = BenchSpec(rounds=200, warmup=10, max_seconds=60.0)
IMAGES = 8  # check faces the timed invocations cycle through (real inputs, not zeros)


def board_speed(board: Board, float32_deploy: Path, prefixes: dict[str, Path], images: np.ndarray) -> dict:
    """``board``'s deploy file against the float32 deploy file, and its stages' shares of the latency."""
    result = board.bench([board.deploy_path, Path(float32_deploy), *prefixes.values()], SPEC, images[:IMAGES])
    speed = speed_of(result, 0, 1)
    speed["stage_shares"] = stage_shares(result, 0, {s: i + 2 for i, s in enumerate(prefixes)})
    return speed


def speed_gate(speed: dict, thresholds: dict) -> list[Verdict]:
    """The speed verdict where ``[speed] min_speedup`` is on (above 0); none where it is off."""
    on = thresholds["speed"]["min_speedup"] > 0
    return judge({"speedup_b1": speed["speedup_b1"] if on else None}, thresholds)


def speed_verdicts(speed: dict, thresholds: dict) -> list[dict]:
    """``speed_gate`` as report.json writes it."""
    return [v.to_dict() for v in speed_gate(speed, thresholds)]


def slower_warning(board: str, speed: dict, variant: str) -> str | None:
    """A plain warning when the quantized file runs slower than float32 on ``board``."""
    if speed["speedup_b1"] >= 1.0:
        return None
    message = (f"on {board} the {variant} file runs slower than float32 ({speed['latency_ms']:.3f} ms "
               f"against {speed['float32_latency_ms']:.3f} ms at batch 1, {speed['speedup_b1']:.2f}x): "
               "float32 is the faster file to ship there")
    warnings.warn(message, stacklevel=2)
    return message


def with_speed(board: Board, judged: BoardResult, float32_deploy: Path, prefixes: dict[str, Path],
               images: np.ndarray, thresholds: dict) -> BoardResult:
    """``judged`` (``board``'s result) with its ``speed`` and, where it is on, the speed verdict."""
    speed = board_speed(board, float32_deploy, prefixes, images)
    verdicts = speed_gate(speed, thresholds)
    return replace(judged, speed=speed, verdicts=judged.verdicts + tuple(verdicts),
                   passed=judged.passed and all(v.passed for v in verdicts))


class Pricer:
    """Prices a recipe's deploy file against float32 where ``where`` says: "host" or an agent URL."""

    def __init__(self, where: str, token: str | None = None, trust: Trust | None = None):
        from ..remote import AgentClient, normalize_url

        self.name = HOST if where == HOST else normalize_url(where)
        self.client = None if self.name == HOST else AgentClient(self.name, token, trust=trust)
        if self.client is not None:
            self.client.health()  # AgentError now, not after the check's long work
        self.images: np.ndarray | None = None  # the faces timed invocations cycle through (set by the check)

    def __call__(self, deploy: Path, float32_deploy: Path) -> dict:
        files = [Path(deploy), Path(float32_deploy)]
        result = (bench_host(files, SPEC, images=self.images) if self.client is None
                  else bench_agent(self.client, files, SPEC, self.images))
        speed = speed_of(result)
        return {k: speed[k] for k in ("latency_ms", "float32_latency_ms", "speedup_b1", "peak_rss_mib")}
