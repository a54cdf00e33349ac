"""The disagreement ascent: float vs quantized embeddings maximised by finite differences within an
L-infinity budget, against the float file itself (exactly 0) and against random perturbations of the
same budget; in-process and through a loopback agent, which receives both files."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from test_ascent_fd import export_tiny, start_images  # noqa: E402

from device import ascent, tasks  # noqa: E402
from device.agent import AgentServer  # noqa: E402
from device.plan import ProbePlan  # noqa: E402
from device.runtime import Runtime  # noqa: E402
from toolkit import remote  # noqa: E402

BUDGET = 8.0 / 128.0  # 8 grey levels


def plan(images, steps=8, control=100, **objective) -> ProbePlan:
    return ProbePlan(targets=[], images=images, steps=steps, step_size=0.5, step_rule="sign",
                     subspace={"kind": "dct", "size": 3},
                     objective={"kind": "disagreement", "budget": BUDGET, "control": control, **objective})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """float32, int8 and int8 calibrated on dark faces (its ranges clipped for bright ones) of one model."""
    from toolkit.data.normalize import DEFAULT_NORMALIZATION
    from toolkit.export import export_keras

    model, files = export_tiny(tmp_path_factory.mktemp("tiny"), ("float32", "int8"))
    dark = np.random.default_rng(0).integers(0, 64, (32, 32, 32, 3)).astype(np.uint8)
    meta = {"normalization": DEFAULT_NORMALIZATION, "architecture": "tiny"}
    files["dark"] = export_keras(model, meta, tmp_path_factory.mktemp("dark"), variants=("int8",),
                                 calibration=dark)["int8"]
    return files


def test_a_file_against_itself_disagrees_exactly_zero(files):
    deploy = files["float32"]["deploy"]
    result = ascent.run_plan(Runtime(deploy), plan(start_images(2), steps=3, control=20),
                             reference=Runtime(deploy))
    assert result.objective.shape == (2, 1, 4)
    assert np.all(result.objective == 0.0)
    assert result.meta["control"]["worst"] == [0.0, 0.0]
    np.testing.assert_array_equal(result.final_images[:, 0], start_images(2))


def test_ascent_beats_random_control_within_the_budget(files):
    images = start_images(3, seed=1)
    result = ascent.run_plan(Runtime(files["dark"]["deploy"]), plan(images),
                             reference=Runtime(files["float32"]["deploy"]))
    found = result.objective.max(axis=-1)[:, 0]
    chance = np.asarray(result.meta["control"]["worst"])
    assert np.all(result.objective[:, 0, 0] > 0)  # int8 already disagrees a little at the start
    assert np.all(found > result.objective[:, 0, 0])
    assert np.all(found > chance), (found, chance)
    assert result.meta["control"]["count"] == 100
    # The kept image lies within the budget and scores the best distance found.
    moved = np.abs(result.final_images[:, 0] - images).max(axis=(1, 2, 3))
    assert np.all(moved <= BUDGET + 1e-6) and np.all(moved > BUDGET / 4)
    found_images = result.final_images[:, 0]
    again = ascent.cosine_distance(Runtime(files["dark"]["deploy"]).run(found_images)["embedding"],
                                   Runtime(files["float32"]["deploy"]).run(found_images)["embedding"])
    np.testing.assert_allclose(again, found, rtol=1e-6)


def test_tap_measure_and_bad_plans(files):
    probe_q, probe_f = Runtime(files["int8"]["probe"]), Runtime(files["float32"]["probe"])
    tap = plan(start_images(1), steps=2, control=0, measure="tap", tap="stage1/block1")
    result = ascent.run_plan(probe_q, tap, reference=probe_f)
    assert result.objective[0, 0, -1] > 0 and "control" not in result.meta
    with pytest.raises(ValueError, match="reference"):
        ascent.run_plan(probe_q, tap)
    with pytest.raises(ValueError, match="no targets"):
        ascent.run_plan(probe_q, ProbePlan(**{**plan(start_images(1)).__dict__,
                                              "targets": [{"tap": "stem/conv", "channel": 0}]}),
                        reference=probe_f)
    with pytest.raises(ValueError, match="objective.tap"):
        ascent.run_plan(probe_q, plan(start_images(1), measure="tap", tap="nope"), reference=probe_f)
    with pytest.raises(ValueError, match="budget"):
        ascent.run_plan(probe_q, plan(start_images(1), budget=0.0), reference=probe_f)


def test_agent_runs_a_disagreement_job_with_a_second_model(files, tmp_path):
    server = AgentServer("127.0.0.1", 0, tmp_path / "store")
    server.quiet = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = remote.AgentClient(f"http://127.0.0.1:{server.server_address[1]}")
        quant, ref = client.push(files["int8"]["deploy"]), client.push(files["float32"]["deploy"])
        job = plan(start_images(2, seed=1), steps=3, control=10, reference=ref)
        got = client.run(quant, job)
        local = tasks.run(Runtime(files["int8"]["deploy"]), job, "ascent",
                          reference=Runtime(files["float32"]["deploy"]))
        np.testing.assert_array_equal(got.objective, local.objective)
        assert got.meta["control"]["worst"] == local.meta["control"]["worst"]
        # A plan naming a model the agent does not hold is refused before it runs.
        with pytest.raises(remote.AgentError, match="reference"):
            client.run(quant, plan(start_images(1), reference="0" * 64))
        with pytest.raises(remote.AgentError, match="objective.reference"):
            client.run(quant, plan(start_images(1)))
    finally:
        server.shutdown()
        server.server_close()


def test_schema_1_plans_still_load_and_disagreement_needs_schema_2():
    old = {"schema": "faceprobe.probe-plan/1", "targets": [{"tap": "stem/conv", "channel": 0}], "steps": 3}
    loaded = ProbePlan.from_json(old, start_images(1))
    assert loaded.objective["kind"] == "mean" and loaded.steps == 3
    assert loaded.to_json()["schema"] == "faceprobe.probe-plan/2"
    with pytest.raises(ValueError, match="needs schema"):
        ProbePlan.from_json({**old, "objective": {"kind": "disagreement"}}, start_images(1))
    doc = json.loads(json.dumps(plan(start_images(1)).to_json()))
    assert ProbePlan.from_json(doc, start_images(1)).objective["budget"] == BUDGET
