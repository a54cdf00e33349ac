"""The quantization recipe: round trips through TOML and JSON, errors that name the key, and export by
recipe (`faceprobe export --recipe`): keep-float, percentile ranges, per-tensor weights and int16x8."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from toolkit import cli
from toolkit.export import Calibration, Recipe, RecipeError, export_model, load_recipe
from toolkit.modelfile import save_face_model
from toolkit.zoo import get_model

SIZE = 32


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    keras.utils.set_random_seed(5)
    return save_face_model(get_model("tiny", input_size=SIZE, embedding_dim=8),
                           tmp_path_factory.mktemp("m") / "model.keras")


@pytest.fixture(scope="module")
def faces():
    return np.random.default_rng(0).integers(0, 256, (24, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_recipe_round_trips(tmp_path, suffix):
    recipe = Recipe("int8", precision={"stage1/block1": "float32"}, int8_io=True,
                    float_ops=("DEPTHWISE_CONV_2D",),
                    calibration=Calibration(images="faces", identities="s1-s30", count=50, seed=3,
                                            range_rule="percentile", percentile=99.9))
    assert load_recipe(recipe.save(tmp_path / f"r{suffix}")) == recipe
    assert recipe.keep_float == ["stage1/block1"]
    assert recipe.label() == ("int8 p99.9/50 +float(stage1/block1) +float(depthwise_conv_2d ops) "
                              "int8-io")


@pytest.mark.parametrize("text, key", [
    ('variant = "int4"\n', "variant"),
    ('variant = "int8"\nbogus = 1\n', "'bogus'"),
    ('[calibration]\ncount = 0\n', "calibration.count"),
    ('[calibration]\nrange_rule = "mse"\n', "calibration.range_rule"),
    ('[precision]\n"stem/conv" = "int4"\n', "precision.'stem/conv'"),
    ('variant = "float16"\n[precision]\n"stem/conv" = "float32"\n', "precision.'stem/conv'"),
    ('variant = "int16x8"\n[precision]\n"stem/conv" = "float32"\n', "precision.'stem/conv'"),
    ('variant = "float16"\nint8_io = true\n', "int8_io"),
    ('variant = "int8"\n[calibration\n', "not valid TOML"),
    ('float_ops = ["DEPTHWISE"]\n', "float_ops: unknown op 'DEPTHWISE'"),
    ('float_ops = "DEPTHWISE_CONV_2D"\n', "float_ops must be a list"),
    ('variant = "float16"\nfloat_ops = ["DEPTHWISE_CONV_2D"]\n', "float_ops applies to the int8"),
])
def test_bad_recipe_names_the_key(tmp_path, text, key):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=key.replace(".", r"\.").replace("(", r"\(")):
        load_recipe(path)


def test_export_by_recipe_records_it_in_every_manifest(model_path, faces, tmp_path, capsys):
    recipe = Recipe("int8", precision={"stage1/block1": "float32"},
                    calibration=Calibration(count=16, range_rule="percentile", percentile=99.9))
    path = recipe.save(tmp_path / "recipe.toml")
    cv2 = pytest.importorskip("cv2")
    for i, face in enumerate(faces):
        folder = tmp_path / "faces" / f"p{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), face)
    code = cli.main(["export", str(model_path), "--recipe", str(path), "--calibration",
                     str(tmp_path / "faces"), "--out", str(tmp_path / "out"), "--json"])
    assert code == 0
    assert list(json.loads(capsys.readouterr().out)["variants"]) == ["int8"]
    for role in ("", ".probe"):
        manifest = json.loads((tmp_path / "out" / f"model.int8{role}.manifest.json").read_text())
        assert Recipe.from_dict(manifest["recipe"]) == recipe.with_(
            calibration={"images": str(tmp_path / "faces")})
        assert manifest["converter"]["options"]["range_rule"] == "percentile"
        assert manifest["keep_float"] == ["stage1/block1"]
    assert cli.main(["export", str(model_path), "--recipe", str(path), "--keep-float", "stem/conv",
                     "--out", str(tmp_path / "o2")]) == 2
    assert "already says --keep-float" in capsys.readouterr().err


def test_percentile_ranges_are_narrower_than_min_max(model_path, faces, tmp_path):
    from device.manifest import load_manifest, manifest_path_for

    def tap_scale(recipe, folder):
        files = export_model(model_path, tmp_path / folder, [recipe], calibration=faces, progress=False)
        outputs = load_manifest(manifest_path_for(files["int8"]["probe"]))["outputs"]
        return {o["key"]: o["int8"]["scale"] for o in outputs if o["kind"] == "tap"}

    minmax = tap_scale(Recipe("int8", calibration=Calibration(count=24)), "minmax")
    pct_rule = Calibration(count=24, range_rule="percentile", percentile=99.0)
    pct = tap_scale(Recipe("int8", calibration=pct_rule), "pct")
    assert all(pct[k] <= minmax[k] * (1 + 1e-6) for k in minmax)
    assert any(pct[k] < 0.9 * minmax[k] for k in minmax)


def test_float_ops_keep_every_depthwise_conv_float(model_path, faces, tmp_path, capsys):
    """``float_ops``: every depthwise conv of the deploy and probe files computes in float32 (the
    converter's op denylist) while the other convs, and the taps behind them, stay int8."""
    from ai_edge_litert.interpreter import Interpreter

    from device.manifest import load_manifest, manifest_path_for

    out = tmp_path / "out"
    code = cli.main(["export", str(model_path), "--variants", "int8", "--float-ops", "DEPTHWISE_CONV_2D",
                     "--calibration-size", "16", "--out", str(out), "--json"])
    assert code == 2 and "needs calibration" in capsys.readouterr().err  # no faces: refused, nothing written
    assert not out.exists()
    files = export_model(model_path, out, [Recipe("int8", calibration=Calibration(count=16),
                                                  float_ops=("DEPTHWISE_CONV_2D",))],
                         calibration=faces, progress=False)["int8"]
    for role, path in files.items():
        it = Interpreter(str(path))
        dtypes = {d["index"]: d["dtype"] for d in it.get_tensor_details()}
        kinds: dict[str, set] = {}
        for op in it._get_ops_details():
            kinds.setdefault(op["op_name"], set()).add(np.dtype(dtypes[op["outputs"][0]]).name)
        assert kinds["DEPTHWISE_CONV_2D"] == {"float32"}, role
        assert "int8" in kinds["CONV_2D"], role
        manifest = load_manifest(manifest_path_for(path))
        assert manifest["recipe"]["float_ops"] == ["DEPTHWISE_CONV_2D"]
        assert manifest["converter"]["options"]["float_ops"] == ["DEPTHWISE_CONV_2D"]
    outputs = load_manifest(manifest_path_for(files["probe"]))["outputs"]
    assert {o["dtype"] for o in outputs if o["kind"] == "tap"} == {"int8"}


def test_int16x8_and_per_tensor_exports(model_path, faces, tmp_path):
    from device.runtime import Runtime

    small = Calibration(count=16)
    files = export_model(model_path, tmp_path / "a", [Recipe("int16x8", calibration=small)],
                         calibration=faces, progress=False)
    runtime = Runtime(files["int16x8"]["deploy"], kernels="builtin")
    from ai_edge_litert.interpreter import Interpreter

    dtypes = {d["dtype"].__name__ for d in Interpreter(str(files["int16x8"]["deploy"])).get_tensor_details()}
    assert "int16" in dtypes
    assert runtime.run(np.zeros((1, SIZE, SIZE, 3), np.float32))["embedding"].shape == (1, 8)
    per_tensor = export_model(model_path, tmp_path / "b",
                              [Recipe("int8", calibration=small, per_channel=False)], calibration=faces,
                              progress=False)
    manifest = json.loads(per_tensor["int8"]["deploy"].with_name("model.int8.manifest.json").read_text())
    assert manifest["recipe"]["per_channel"] is False
