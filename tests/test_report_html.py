"""`faceprobe probe` / `faceprobe report` end to end on a tiny model and a small identity-folder dataset."""

import json
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pytest

from toolkit.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from toolkit.modelfile import save_face_model
    from toolkit.zoo import get_model

    root = tmp_path_factory.mktemp("probe")
    model_path = save_face_model(get_model("tiny", input_size=32, embedding_dim=8), root / "model.keras")
    rng = np.random.default_rng(0)
    data = root / "faces"
    for person in range(3):
        base = rng.integers(0, 256, (40, 40, 3))
        (data / f"p{person}").mkdir(parents=True)
        for k in range(3):
            noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(data / f"p{person}" / f"{k}.png"), noisy)
    return root, model_path, data


def test_probe_writes_results_pictures_and_a_self_contained_page(setup, capsys):
    root, model_path, data = setup
    out = root / "run"
    code = main(["probe", str(model_path), "--images", str(data), "--person", "p1", "--n-images", "2",
                 "--steps", "3", "--per-stage", "2", "--data", str(data), "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["targets"] == 6 and summary["images"] == 2
    assert set(summary["stages"]) == set(summary["invariance"]) == {"first", "middle", "last"}
    for name in ("stage_first", "stage_middle", "stage_last", "same_person"):
        png = cv2.imread(str(out / "figures" / f"{name}.png"))
        assert png is not None and png.std() > 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"(https?:)?//[a-z0-9]", text, re.I)  # no external URL of any kind
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    assert "Identity invariance" in page and "What each stage captures" in page
    assert set(summary["findings"]) == {"frequency", "colour", "invariance"}
    for finding in summary["findings"].values():
        assert set(finding) == {"trained", "controls", "effect", "ci", "verdict"}
    assert page.count("against controls") == 3 and "<ul class='columns'>" in page

    (out / "report.html").unlink()
    (out / "figures" / "same_person.png").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 4


def test_probe_runs_a_saved_plan_and_invariance_json(setup, capsys):
    root, model_path, data = setup
    plan_path = root / "plan.json"
    assert main(["probe", str(model_path), "--images", str(data), "--taps", "first", "stage2/block1",
                 "--channels", "1,3", "--steps", "2", "--step-rule", "normalized", "--subspace", "dct:4",
                 "--save-plan", str(plan_path), "--out", str(root / "a"), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["probe", str(model_path), "--plan", str(plan_path), "--out", str(root / "b"), "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["stages"] == second["stages"]
    targets = json.loads(plan_path.read_text())["targets"]
    assert targets == [{"tap": t, "channel": c} for t in ("stem/conv", "stage2/block1") for c in (1, 3)]
    result = json.loads((root / "b" / "result" / "result.json").read_text())
    assert 0 < result["meta"]["captured_share"] < 1

    assert main(["probe", str(model_path), "--invariance", "--data", str(data), "--json"]) == 0
    inv = json.loads(capsys.readouterr().out)
    assert set(inv["stages"]) == {"first", "middle", "last"}
    assert all(-1 <= v <= 1 for v in inv["stages"].values())
    assert inv["images"] == 9 and inv["identities"] == 3
    assert inv["source"] == "ascent" and inv["grid"] == 4  # tiny at 32 px: the last stage's 4x4 map
    assert set(inv["controls"]) == {"untrained", "pixels", "noise", "permutation"}
    for name, values in inv["controls"].items():
        assert set(values) == {"first", "middle", "last"}, name
    for s, (lo, hi) in inv["ci"].items():
        assert lo <= hi
        assert inv["verdict"][s] in ("reproduced", "not reproduced", "inconclusive")
    assert "affine" in inv["finding"]["excluded"]["first"]  # tiny's first tap is its stem


@pytest.mark.parametrize("argv, message", [
    (["--out", "x", "--taps", "nowhere"], "neither a tap nor a stage"),
    (["--out", "x", "--channels", "999"], r"channel 999 is out of range"),
    (["--invariance"], "--invariance needs --data"),
    ([], "--out DIR is required"),
])
def test_probe_errors_are_clear(setup, capsys, argv, message):
    root, model_path, data = setup
    assert main(["probe", str(model_path), "--images", str(data), *argv]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_report_on_a_directory_without_results(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no probe results" in capsys.readouterr().err


def test_start_images_from_a_folder_or_files(setup):
    from toolkit.probe.images import load_start_images

    _, _, data = setup
    images, origin = load_start_images([str(data / "p2")], 24, count=2, progress=False)
    assert images.shape == (2, 24, 24, 3) and images.dtype == np.uint8 and "0.png, 1.png" in origin
    files = [str(data / "p0" / "2.png"), str(data / "p1" / "0.png")]
    images, _ = load_start_images(files, 24, count=4, progress=False)
    expected = cv2.cvtColor(cv2.resize(cv2.imread(files[1]), (24, 24), interpolation=cv2.INTER_AREA),
                            cv2.COLOR_BGR2RGB)
    assert len(images) == 2 and np.abs(images[1].astype(int) - expected).max() <= 1
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_start_images([str(data / "nobody")], 24)
    with pytest.raises(ValueError, match="--person needs"):
        load_start_images([str(data / "p2")], 24, person="p2")
