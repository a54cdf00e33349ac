"""Training through tf.distribute: two multi-worker processes on loopback end with the same weights."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_train_run import tiny_config

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_train_run import tiny_config
    from toolkit.train import train

    result = train(tiny_config({data!r}, epochs=2, batch_size=8, strategy="multi-worker"), {run!r},
                   progress=False)
    print("RESULT", result.model_path, flush=True)
""")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow
def test_two_workers_on_loopback_train_identical_weights(tmp_path):
    from toolkit.data import synthesize

    data = synthesize(tmp_path / "faces", identities=4, images_per_identity=8, size=32, progress=False)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    run = tmp_path / "run"
    script = WORKER.format(root=str(ROOT), tests=str(ROOT / "tests"), data=str(data), run=str(run))
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            outputs.append(out)
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    paths = [line.split(" ", 1)[1] for out in outputs for line in out.splitlines()
             if line.startswith("RESULT")]
    # The chief (worker 0) writes the run dir; the other worker keeps its files in a subfolder.
    assert paths == [str(run / "model.keras"), str(run / "workers" / "worker-1" / "model.keras")]

    from toolkit.modelfile import load_face_model

    chief, _ = load_face_model(paths[0])
    other, _ = load_face_model(paths[1])
    for a, b in zip(chief.trainable_weights, other.trainable_weights, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    hist = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["replicas"] == 2
    # The workers took real steps: the weights moved away from the seeded initial ones.
    import keras

    from toolkit.train import build_embedding

    keras.utils.set_random_seed(0)
    initial = build_embedding(tiny_config(data))
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
             for a, b in zip(chief.trainable_weights, initial.trainable_weights, strict=True)]
    assert max(moved) > 1e-3


def test_mirrored_strategy_trains_through_fit(tmp_path):
    from toolkit.data import synthesize
    from toolkit.train import train

    data = synthesize(tmp_path / "faces", identities=3, images_per_identity=6, size=32, progress=False)
    result = train(tiny_config(data, epochs=2, batch_size=6, strategy="mirrored"), tmp_path / "run",
                   progress=False, log=lambda m: None)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in result.history)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["strategy"] == "mirrored" and config["resolved"]["replicas"] >= 1


def test_multi_worker_without_tf_config_is_a_clear_error(tmp_path, monkeypatch):
    from toolkit.train import train

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        train(tiny_config(tmp_path, strategy="multi-worker"), tmp_path / "run", progress=False)
