"""`faceprobe bench`: time exported files on the host and on board agents, side by side."""

from __future__ import annotations

import argparse
import json
import os

from device.cli import TOKEN_ENV, batch_sizes
from device.console import non_negative_int, positive_float, positive_int

from . import agent_trust, agent_trust_options


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="time .tflite files on the host and on board agents (latency, size, memory)",
        description="Time FILE.tflite files interleaved, round by round, on the host (in sandbox children, "
                    "as a board runs them) and on every agent named (its bench job, in the agent's own "
                    "interpreter configuration unless --threads), each on real-valued inputs: min / "
                    "median / p90 latency per batch size, file size, and the memory each file costs (peak "
                    "RSS of its child over an empty child). The board's own figures are the ones to trust: "
                    "int8 kernels that are slow on x86 can be fast on ARM.")
    p.add_argument("files", nargs="+", metavar="FILE", help=".tflite files written by `faceprobe export`")
    p.add_argument("--agent", action="append", default=[], metavar="URL",
                   help="board agent to time on as well (repeat, or comma-separated)")
    p.add_argument("--token", default=None, help=f"bearer token of the agents (default: ${TOKEN_ENV})")
    agent_trust_options(p)
    p.add_argument("--no-host", action="store_true", help="time on the agents only")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="interpreter threads everywhere (default: each machine's own configuration)")
    p.add_argument("--rounds", type=positive_int, default=200, help="timed invocations per file and batch")
    p.add_argument("--warmup", type=non_negative_int, default=10, help="untimed invocations first")
    p.add_argument("--batch", type=batch_sizes, default=(1,), metavar="B[,B...]",
                   help="batch sizes to time (default 1)")
    p.add_argument("--max-seconds", type=positive_float, default=120.0,
                   help="stop timing after this long on each machine, with the rounds done so far")
    p.add_argument("--json", action="store_true", help="print {machine: bench result} as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from device.bench import BenchSpec, local_files, table

    from ..speed import bench_everywhere

    local_files(args.files)  # a wrong file is named before any agent is asked
    agents = [u.strip() for a in args.agent for u in a.split(",") if u.strip()]
    if args.no_host and not agents:
        raise ValueError("--no-host leaves nowhere to time: name an agent with --agent URL")
    spec = BenchSpec(rounds=args.rounds, warmup=args.warmup, batch_sizes=args.batch, threads=args.threads,
                     max_seconds=args.max_seconds)
    results = bench_everywhere(args.files, spec, agents, args.token or os.environ.get(TOKEN_ENV),
                               host=not args.no_host, threads=args.threads, trust=agent_trust(args))
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0
