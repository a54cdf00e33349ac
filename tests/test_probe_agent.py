"""`faceprobe probe --agent`: the same plan on a board agent over loopback HTTP, compared with the host."""

import json
import threading

import pytest

from device.agent import AgentServer
from toolkit.cli import main
from toolkit.data import synthesize
from toolkit.export import export_model
from toolkit.modelfile import save_face_model
from toolkit.zoo import get_model

SIZE = 48
TOKEN = "probe-agent-test-token"


@pytest.fixture
def agent(tmp_path):
    server = AgentServer("127.0.0.1", 0, tmp_path / "store", token=TOKEN)
    server.quiet = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_board_ascent_matches_host_autodiff(tmp_path, agent, capsys):
    model = save_face_model(get_model("tiny", input_size=SIZE), tmp_path / "model.keras")
    probe = export_model(model, tmp_path / "export", variants=("float32",))["float32"]["probe"]
    faces = synthesize(tmp_path / "faces", identities=2, images_per_identity=2, size=SIZE, progress=False)
    out = tmp_path / "probe"
    args = ["probe", str(model), "--images", str(faces), "--n-images", "1", "--per-stage", "2",
            "--steps", "3", "--subspace", "dct:2", "--agent", agent, "--tflite", str(probe), "--token", TOKEN,
            "--out", str(out), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    (board,) = summary["boards"].values()
    assert board["gradient_cosine"] > 0.99
    assert board["change_correlation"] > 0.99
    assert (out / "boards").is_dir() and list((out / "boards").glob("*/result.npz"))


def test_agent_without_subspace_is_refused(tmp_path, agent):
    model = save_face_model(get_model("tiny", input_size=SIZE), tmp_path / "model.keras")
    faces = synthesize(tmp_path / "faces", identities=2, images_per_identity=2, size=SIZE, progress=False)
    assert main(["probe", str(model), "--images", str(faces), "--agent", agent, "--tflite", "x.tflite",
                 "--out", str(tmp_path / "p")]) == 2
