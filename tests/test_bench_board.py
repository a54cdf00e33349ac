"""The board's own clock: the bench job on a loopback agent and `faceprobe-agent bench` offline, on real
exported files (interleaved timing, real-valued inputs, memory over an empty child, bounds answered 4xx)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from test_ascent_fd import export_tiny, start_images  # noqa: E402

from device import bench  # noqa: E402
from device.agent import AgentServer  # noqa: E402
from device.bench import BenchLimits, BenchPlan, BenchSpec  # noqa: E402
from device.manifest import load_manifest, manifest_path_for  # noqa: E402
from device.plan import ProbePlan  # noqa: E402
from toolkit.remote import AgentClient, AgentError  # noqa: E402

TOKEN = "bench-token"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    _, exported = export_tiny(tmp_path_factory.mktemp("tiny"), variants=("float32", "int8"))
    return exported


@pytest.fixture()
def agent(tmp_path):
    server = AgentServer("127.0.0.1", 0, tmp_path / "store", token=TOKEN)
    server.quiet = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, AgentClient(f"http://127.0.0.1:{server.server_address[1]}", TOKEN)
    server.shutdown()
    server.server_close()


def test_inputs_are_real_valued_faces_or_draws_over_the_input_range(files):
    manifest = load_manifest(manifest_path_for(files["int8"]["deploy"]))
    drawn = bench.bench_inputs(manifest, None, 4)
    lo, hi = bench.input_range(manifest)
    assert drawn.shape == (4, 32, 32, 3) and drawn.min() >= lo and drawn.max() <= hi
    assert np.std(drawn) > 0.3  # uniform over about [-1, 1], not zeros
    faces = start_images(3)
    np.testing.assert_array_equal(bench.bench_inputs(manifest, faces, 5), faces[[0, 1, 2, 0, 1]])
    with pytest.raises(ValueError, match="shape"):
        bench.bench_inputs(manifest, np.zeros((2, 16, 16, 3), np.float32), 1)


def test_interleaved_timing_stops_at_its_time_budget():
    slow = [lambda: sum(range(20000)), lambda: None]
    samples = bench.time_interleaved(slow, rounds=10**6, warmup=0, max_seconds=0.05)
    assert 1 <= len(samples[0]) == len(samples[1]) < 10**6
    assert np.median(samples[0]) > np.median(samples[1])  # the call that does work takes longer


def test_agent_bench_job_times_several_held_models_interleaved(agent, files):
    server, client = agent
    deploy = [files["int8"]["deploy"], files["float32"]["deploy"]]
    ids = [client.push(f) for f in deploy]
    spec = BenchSpec(rounds=30, warmup=2, batch_sizes=(1, 4))
    result = client.run(ids[0], BenchPlan(spec, start_images(2), ids[1:]), "bench", timeout=120)
    stats = result["stats"]
    assert result["meta"]["kind"] == "bench" and stats["schema"] == bench.BENCH_SCHEMA
    assert [f["sha256"] for f in stats["files"]] == ids and stats["inputs"] == "images"
    assert stats["rounds"] == 30 and stats["kernels"] == "xnnpack"
    for f, path in zip(stats["files"], deploy, strict=True):
        assert f["bytes"] == path.stat().st_size and f["role"] == "deploy"
        for batch in ("1", "4"):
            s = f["latency"][batch]
            assert 0 < s["min_ms"] <= s["median_ms"] <= s["p90_ms"] and s["runs"] == 30
        # The interpreter and its buffers cost something over a child that loaded nothing.
        assert f["peak_rss_bytes"] > 0
        assert f["peak_rss_mib"] == pytest.approx(f["peak_rss_bytes"] / 2**20, rel=0.01)
    assert stats["files"][0]["variant"] == "int8" and stats["files"][1]["variant"] == "float32"
    # The same job offline: `faceprobe-agent bench` on the files themselves.
    out = subprocess.run([sys.executable, "-m", "device.cli", "bench", *map(str, deploy), "--rounds", "20",
                          "--batch", "1,4", "--json"], capture_output=True, text=True, check=True)
    offline = json.loads(out.stdout)
    assert [f["sha256"] for f in offline["files"]] == ids and offline["rounds"] == 20
    assert offline["inputs"] == "uniform over the input range"
    table = subprocess.run([sys.executable, "-m", "device.cli", "bench", str(deploy[0]), "--rounds", "5"],
                           capture_output=True, text=True, check=True).stdout
    assert "model.int8.tflite" in table and "min ms" in table


def test_bench_jobs_past_the_limits_are_refused_with_4xx(agent, files):
    server, client = agent
    model_id = client.push(files["int8"]["deploy"])
    other = client.push(files["float32"]["deploy"])
    limits = BenchLimits()
    cases = {
        "rounds": (BenchSpec(rounds=limits.max_rounds + 1), [], 413),
        "images in a batch": (BenchSpec(batch_sizes=(limits.max_batch + 1,)), [], 413),
        "threads": (BenchSpec(threads=limits.max_threads + 1), [], 413),
        "seconds of timing": (BenchSpec(max_seconds=limits.max_seconds + 1), [], 413),
        "models": (BenchSpec(), [other] * 1 + [f"{i:064x}" for i in range(limits.max_models)], 413),
        "not held": (BenchSpec(), ["ab" * 32], 400),
    }
    for expected, (spec, models, status) in cases.items():
        with pytest.raises(AgentError, match=expected) as err:
            client.submit(model_id, BenchPlan(spec, np.zeros((0, 32, 32, 3), np.float32), models), "bench")
        assert err.value.status == status, expected
    # A bench section that is not one, and images of another shape, are the client's mistakes too.
    plan = BenchPlan(BenchSpec(), np.zeros((1, 16, 16, 3), np.float32), [other])
    with pytest.raises(AgentError, match="input shape") as err:
        client.submit(model_id, plan, "bench")
    assert err.value.status == 400
    with pytest.raises(AgentError, match="bench") as err:  # a probe plan without a bench section
        client.submit(model_id, ProbePlan(targets=[], images=start_images(1)), "bench")
    assert err.value.status == 400
    assert not server.jobs.list()  # nothing was queued


def test_benchmark_model_op_profile_is_parsed():
    rows = [("[Node type]", "[count]", "[avg ms]", "[avg %]", "[cdf %]", "[mem KB]", "[times called]"),
            ("CONV_2D", "12", "0.412", "61.220%", "61.220%", "0.000", "12"),
            ("DEPTHWISE_CONV_2D", "9", "0.198", "29.421%", "90.641%", "0.000", "9"),
            ("ADD", "3", "0.063", "9.359%", "100.000%", "0.000", "3")]
    # benchmark_model's layout: a banner, then tab-separated right-aligned columns, then the timings line.
    table = "\n".join("\t" + "\t".join(f"{c:>12}" for c in row) for row in rows)
    text = (f"{'=' * 30} Summary by node type {'=' * 30}\n{table}\n\n"
            "Timings (microseconds): count=50 first=1290 curr=672 min=655 max=1290 avg=690.3 std=89\n")
    ops = bench.parse_op_profile(text)
    assert list(ops) == ["CONV_2D", "DEPTHWISE_CONV_2D", "ADD"]
    assert ops["CONV_2D"] == {"count": 12, "avg_ms": 0.412, "share": pytest.approx(0.6122)}
    assert sum(o["share"] for o in ops.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="Summary by node type"):
        bench.parse_op_profile("INFO: Average inference timings in us: Warmup: 1290, Inference: 690")


def test_board_speed_benchmark_quick_prints_its_keys():
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench" / "board_speed.py"
    out = subprocess.run([sys.executable, str(script), "--quick", "--json"], capture_output=True, text=True,
                         check=True, timeout=600)
    result = json.loads(out.stdout)
    variants = ["float32", "float16", "dynamic_int8", "int8", "int16x8"]
    assert [f["variant"] for f in result["files"]] == variants
    for f in result["files"]:
        assert set(f) == {"variant", "agent_ms", "inprocess_ms", "ratio", "peak_rss_mib", "size_bytes"}
        assert f["ratio"] == pytest.approx(f["agent_ms"] / f["inprocess_ms"]) and f["size_bytes"] > 0
    assert list(result["stage_shares"]) == ["first", "middle", "last"]
    assert result["stage_shares_sum"] == pytest.approx(sum(result["stage_shares"].values()))


def test_offline_bench_adds_benchmark_model_profile(files, tmp_path):
    """`--benchmark-model` runs the binary on each file with op profiling and adds its table. No
    benchmark_model build is installed here, so a script in its place checks the flags it is given (as
    the real binary reads them) and prints the binary's table for the graph it was pointed at."""
    fake = tmp_path / "benchmark_model"
    fake.write_text(f"""#!{sys.executable}
import os, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
if args.get("enable_op_profiling") != "true" or not os.path.isfile(args.get("graph", "")):
    sys.exit("usage: --graph=FILE --enable_op_profiling=true")
nodes = os.path.getsize(args["graph"]) % 7 + 1
print("=" * 30 + " Summary by node type " + "=" * 30)
print("\\t[Node type]\\t[count]\\t[avg ms]\\t[avg %]\\t[cdf %]\\t[mem KB]\\t[times called]")
print(f"\\tCONV_2D\\t{{nodes}}\\t0.250\\t80.000%\\t80.000%\\t0.000\\t{{nodes}}")
print("\\tADD\\t1\\t0.0625\\t20.000%\\t100.000%\\t0.000\\t1")
""")
    fake.chmod(0o755)
    deploy = files["int8"]["deploy"]
    out = subprocess.run([sys.executable, "-m", "device.cli", "bench", str(deploy), "--rounds", "5",
                          "--benchmark-model", str(fake), "--json"], capture_output=True, text=True,
                         check=True)
    profile = json.loads(out.stdout)["files"][0]["op_profile"]
    assert profile["CONV_2D"]["count"] == deploy.stat().st_size % 7 + 1
    assert profile["ADD"] == {"count": 1, "avg_ms": 0.0625, "share": pytest.approx(0.2)}
    bad = subprocess.run([sys.executable, "-m", "device.cli", "bench", str(deploy), "--benchmark-model",
                          str(tmp_path / "missing")], capture_output=True, text=True)
    assert bad.returncode == 2 and "is not an executable file" in bad.stderr and "Traceback" not in bad.stderr


def test_faceprobe_bench_times_files_on_host_and_agent_side_by_side(agent, files, capsys):
    from toolkit.cli import main

    server, client = agent
    deploy = [str(files["int8"]["deploy"]), str(files["float32"]["deploy"])]
    assert main(["bench", *deploy, "--agent", client.url, "--token", TOKEN, "--rounds", "10",
                 "--threads", "1", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert list(results) == ["host", client.url]
    for result in results.values():
        assert [f["variant"] for f in result["files"]] == ["int8", "float32"] and result["threads"] == 1
    assert main(["bench", *deploy, "--agent", client.url, "--token", TOKEN, "--rounds", "5"]) == 0
    table = capsys.readouterr().out
    assert f"{client.url}: " in table and "host: " in table and table.count("model.int8.tflite") == 2
    assert main(["bench", deploy[0], "--no-host"]) == 2
    assert "--no-host leaves nowhere to time" in capsys.readouterr().err
