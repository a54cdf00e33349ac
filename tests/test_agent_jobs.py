"""Jobs on a real exported model through agents on loopback: the remote client, a fleet, the queue."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from test_ascent_fd import DCT2, TARGETS, export_tiny, start_images  # noqa: E402

from device import ascent  # noqa: E402
from device.agent import AgentServer  # noqa: E402
from device.plan import ProbePlan, ProbeResult  # noqa: E402
from device.runtime import Runtime  # noqa: E402
from toolkit import remote  # noqa: E402

TOKEN = "fleet-token"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    _, files = export_tiny(tmp_path_factory.mktemp("tiny"))
    return files["float32"]["probe"]


@pytest.fixture()
def fleet(tmp_path):
    servers = []
    for i in range(2):
        server = AgentServer("127.0.0.1", 0, tmp_path / f"store{i}", token=TOKEN)
        server.quiet = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield servers, [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


def test_probe_remote_on_a_fleet_matches_the_local_run(fleet, model_file):
    servers, urls = fleet
    plan = ProbePlan(targets=TARGETS[:2], images=start_images(2), steps=2, subspace=DCT2)
    results = remote.probe_remote(",".join(urls), model_file, plan, token=TOKEN)
    local = ascent.run_plan(Runtime(model_file), plan)
    assert sorted(results) == sorted(urls)
    for result in results.values():
        assert isinstance(result, ProbeResult)
        np.testing.assert_array_equal(result.gradients, local.gradients)
        np.testing.assert_array_equal(result.final_images, local.final_images)
        assert result.meta["runtime"]["sha256"] == local.meta["runtime"]["sha256"]
        assert result.meta["plan"] == plan.to_json()
    acts = remote.probe_remote(urls, model_file, plan, token=TOKEN, kind="activations")
    direct = Runtime(model_file).run(plan.images)
    for result in acts.values():
        np.testing.assert_array_equal(result["values"]["stage1/block1"], direct["stage1__block1"])
        assert 0 < result["stats"]["stage1/block1"]["negative_fraction"] < 1
    # Each agent received the model once although it ran two jobs.
    for server in servers:
        assert len(server.store.ids()) == 1


def test_jobs_on_one_model_run_one_at_a_time(fleet, model_file):
    servers, urls = fleet
    client = remote.AgentClient(urls[0], TOKEN)
    model_id = client.push(model_file)
    plan = ProbePlan(targets=TARGETS[1:2], images=start_images(1), steps=3, subspace=DCT2)
    with ThreadPoolExecutor(4) as pool:  # concurrent clients submitting to the same model
        job_ids = list(pool.map(lambda _: remote.AgentClient(urls[0], TOKEN).submit(model_id, plan),
                                range(4)))
    jobs = [client.wait(j, timeout=120) for j in job_ids]
    spans = sorted((j["started"], j["finished"]) for j in jobs)
    assert all(prev_end <= start for (_, prev_end), (start, _) in zip(spans, spans[1:], strict=False))
    first = client.result(job_ids[0]).objective
    for j in job_ids[1:]:
        np.testing.assert_array_equal(client.result(j).objective, first)


def test_deploy_command_pushes_to_every_agent(fleet, model_file, capsys):
    from toolkit.cli import main

    servers, urls = fleet
    assert main(["deploy", "--agent", ",".join(urls), "--token", TOKEN, str(model_file), "--json"]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert sorted(ids) == sorted(urls) and len(set(ids.values())) == 1
    assert all(s.store.ids() == [next(iter(ids.values()))] for s in servers)
    assert main(["deploy", "--agent", urls[0], "--token", "wrong", str(model_file)]) == 2
    assert "401" in capsys.readouterr().err
    with pytest.raises(remote.AgentError, match="cannot reach the agent"):
        remote.AgentClient("http://127.0.0.1:9", TOKEN, timeout=5).health()
