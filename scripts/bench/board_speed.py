"""The board's own clock against the host's: every deploy variant of the ORL model timed through a loopback
agent's bench job and in this process, side by side, plus the int8 file's per-stage shares.

    python scripts/bench/board_speed.py --json
    python scripts/bench/board_speed.py --model runs/orl/model.keras --data ../shared/data/att_faces --json
    python scripts/bench/board_speed.py --quick --json      # the tiny model, few rounds (the test suite)

Latency depends on the graph, not on the weights' values, so without --model the ORL recipe's
architecture (models/mobilefacenet-orl.toml: MobileFaceNet width 1.0, 64 px) is built untrained; int8
and int16x8 are calibrated on ORL s1-s30 (synthetic faces where the data is absent). The agent's bench
job and the in-process timing (``device.bench.time_files``: the same files, batch 1, the same threads)
alternate ``--repeats`` times and each keeps its best, so load from other processes falls on both alike.
Prints ``files`` (a list of {variant, agent_ms, inprocess_ms, ratio, peak_rss_mib, size_bytes}) and
``stage_shares`` (per stage, its fraction of the int8 file's batch-1 latency, from prefix files cut after
each stage's last tap, timed on the agent). Goal: every ratio (agent / in-process) within 0.9-1.1; the
stage shares sum to 1 +- 0.15 (what follows the last tap, the embedding head, is the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATA = ROOT.parent / "shared" / "data" / "att_faces"
VARIANTS = ("float32", "float16", "dynamic_int8", "int8", "int16x8")
GOAL = {"ratio": (0.9, 1.1), "stage_shares_sum": (0.85, 1.15)}


def build(quick: bool, model_path: str | None):
    """(model, meta, where it came from): the trained model given, else an untrained one of the same graph."""
    from toolkit.data.normalize import DEFAULT_NORMALIZATION
    from toolkit.modelfile import load_face_model
    from toolkit.zoo import get_model, pooled_embedding

    if model_path:
        model, meta = load_face_model(model_path)
        return model, meta, model_path
    import keras

    keras.utils.set_random_seed(0)
    if quick:
        return (get_model("tiny", input_size=32, embedding_dim=16), {"normalization": DEFAULT_NORMALIZATION},
                "tiny, 32 px, untrained")
    model = pooled_embedding(get_model("mobilefacenet", input_size=64, embedding_dim=64, width=1.0,
                                       activation="relu"))
    return model, {"normalization": DEFAULT_NORMALIZATION}, "ORL recipe architecture, untrained"


def calibration(data: Path, size: int, quick: bool) -> tuple[np.ndarray, str]:
    """uint8 calibration faces: ORL s1-s30 where present, else synthetic faces."""
    from toolkit.data import load_identity_folders, synthesize

    if data.is_dir() and not quick:
        faces = load_identity_folders(data, image_size=size, progress=False)
        return faces.select([f"s{i}" for i in range(1, 31)]).images, f"{data} (s1-s30)"
    folder = synthesize(Path(tempfile.mkdtemp()) / "faces", identities=8, images_per_identity=8, size=size,
                        seed=0, progress=False)
    return load_identity_folders(folder, image_size=size, progress=False).images, "synthetic"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="trained model.keras (default: the ORL recipe's graph, untrained)")
    p.add_argument("--data", default=str(DATA), help="ORL identity folders, for calibration")
    p.add_argument("--rounds", type=int, default=200, help="timed batch-1 invocations per file and repeat")
    p.add_argument("--repeats", type=int, default=3, help="agent / in-process alternations (best kept)")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads, agent and in-process")
    p.add_argument("--quick", action="store_true", help="the tiny model and 20 rounds (for the test suite)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    rounds, repeats = (20, 1) if args.quick else (args.rounds, args.repeats)

    from device.agent import AgentServer
    from device.bench import BenchPlan, BenchSpec, time_files
    from device.manifest import manifest_path_for
    from toolkit.export import Calibration, Recipe, export_keras
    from toolkit.export.prefixes import export_prefixes
    from toolkit.remote import AgentClient
    from toolkit.speed import batch1_ms, stage_shares

    model, meta, origin = build(args.quick, args.model)
    faces, source = calibration(Path(args.data), int(model.input_shape[1]), args.quick)
    recipes = [Recipe(v) if v != "int16x8" else Recipe(v, calibration=Calibration(range_rule="minmax"))
               for v in VARIANTS]
    spec = BenchSpec(rounds=rounds, warmup=5, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_keras(model, meta, Path(tmp) / "export", recipes, calibration=faces)
        deploy = [exported[v]["deploy"] for v in VARIANTS]
        int8 = recipes[VARIANTS.index("int8")]
        prefixes = export_prefixes(model, meta, int8, Path(tmp) / "prefixes", faces)
        server = AgentServer("127.0.0.1", 0, Path(tmp) / "store", threads=args.threads)
        server.quiet = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            client = AgentClient(f"http://127.0.0.1:{server.server_address[1]}")
            ids = [client.push(f) for f in deploy]
            agent_runs, local_runs = [], []
            for _ in range(repeats):
                agent_runs.append(client.run(ids[0], BenchPlan(spec, models=ids[1:]), "bench")["stats"])
                local_runs.append(time_files([(str(f), str(manifest_path_for(f))) for f in deploy], spec,
                                             args.threads, "xnnpack", None))
            staged = [client.push(f) for f in (exported["int8"]["deploy"], *prefixes.values())]
            stages = client.run(staged[0], BenchPlan(spec, models=staged[1:]), "bench")["stats"]
        finally:
            server.shutdown()
            server.server_close()
    files = []
    for i, variant in enumerate(VARIANTS):
        agent_ms = min(batch1_ms(run["files"][i]) for run in agent_runs)
        local_ms = min(run["latency"][i]["1"]["min_ms"] for run in local_runs)
        entry = agent_runs[0]["files"][i]
        files.append({"variant": variant, "agent_ms": agent_ms, "inprocess_ms": local_ms,
                      "ratio": agent_ms / local_ms, "peak_rss_mib": entry["peak_rss_mib"],
                      "size_bytes": entry["bytes"]})
    shares = stage_shares(stages, 0, {s: i + 1 for i, s in enumerate(prefixes)})
    total = sum(shares.values())
    lo, hi = GOAL["ratio"]
    result = {"files": files, "stage_shares": shares, "stage_shares_sum": total, "model": origin,
              "calibration": source, "threads": args.threads, "rounds": rounds, "repeats": repeats,
              "runtime": agent_runs[0]["runtime"], "goal": GOAL,
              "goal_met": all(lo <= f["ratio"] <= hi for f in files)
              and GOAL["stage_shares_sum"][0] <= total <= GOAL["stage_shares_sum"][1]}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{origin}; {result['runtime']['runtime']} {result['runtime']['runtime_version']} on "
          f"{result['runtime']['machine']}, {args.threads} thread(s), best of {rounds} rounds x {repeats}")
    print(f"{'variant':<14}{'agent ms':>10}{'in-proc ms':>12}{'ratio':>8}{'RSS MiB':>9}{'bytes':>11}")
    for f in files:
        print(f"{f['variant']:<14}{f['agent_ms']:>10.3f}{f['inprocess_ms']:>12.3f}{f['ratio']:>8.3f}"
              f"{f['peak_rss_mib']:>9.1f}{f['size_bytes']:>11}")
    print("int8 stage shares: " + ", ".join(f"{s} {v:.3f}" for s, v in shares.items())
          + f" (sum {total:.3f}; the embedding head is the rest)")
    print(f"goal met: {result['goal_met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
