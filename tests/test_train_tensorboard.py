"""TensorBoard beyond loss and learning rate: the verification metric per epoch and, with --probe-every,
the probe's pictures."""

import json

import numpy as np
import pytest

from toolkit.cli import main

RECIPE = """model = "tiny"
input_size = 32
embedding_dim = 8
width = 0.5
batch_size = 8
"""


def _tensors(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    events.Reload()
    return {tag: events.Tensors(tag) for tag in events.Tags()["tensors"]}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tensorboard_gets_verification_accuracy_and_probe_pictures(tmp_path, capsys):
    from toolkit.data import synthesize

    faces = synthesize(tmp_path / "faces", identities=3, images_per_identity=5, size=32, progress=False)
    (tmp_path / "recipe.toml").write_text(RECIPE)
    run = tmp_path / "run"
    assert main(["train", "--recipe", str(tmp_path / "recipe.toml"), "--data", str(faces), "--out", str(run),
                 "--epochs", "2", "--probe-every", "1", "--json"]) == 0
    history = json.loads((run / "history.json").read_text())
    accs = [h["verification_accuracy"] for h in history]
    assert len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)
    scalars = _tensors(run / "logs" / "train")
    from tensorflow import make_ndarray

    logged = [float(make_ndarray(e.tensor_proto)) for e in scalars["epoch_verification_accuracy"]]
    np.testing.assert_allclose(logged, accs, rtol=1e-6)  # TensorBoard shows what history.json keeps
    pictures = _tensors(run / "logs" / "probe")
    assert set(pictures) == {"probe/first", "probe/middle", "probe/last"}
    snapshots = sorted((run / "emergence" / "snapshots").glob("iter_*.npz"))
    assert [e.step for e in pictures["probe/first"]] == [int(p.stem[5:]) for p in snapshots]
    # Each picture is a PNG (TensorBoard stores width, height, then the encoded image).
    assert pictures["probe/last"][-1].tensor_proto.string_val[2][:4] == b"\x89PNG"
