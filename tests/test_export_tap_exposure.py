"""The int8 probe model's taps exposed so that XNNPACK runs it whole, with the values the taps had."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from test_ascent_fd import SIZE, start_images  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The tiny model's tap model converted to int8 as the exporter does, before and after the rewrite."""
    import keras

    from toolkit.data.normalize import DEFAULT_NORMALIZATION, normalize
    from toolkit.export import Recipe
    from toolkit.export.convert import convert, export_saved_model
    from toolkit.export.graph import xnnpack_int8_taps
    from toolkit.zoo import get_model, list_taps, tap_key, tap_model

    keras.utils.set_random_seed(0)
    model = get_model("tiny", input_size=SIZE, embedding_dim=16)
    saved = export_saved_model(tap_model(model), tmp_path_factory.mktemp("saved") / "probe")
    calibration = normalize(np.random.default_rng(0).integers(0, 256, (32, SIZE, SIZE, 3)),
                            DEFAULT_NORMALIZATION)
    plain, _ = convert(saved, Recipe("int8"), calibration)
    keys = [tap_key(t.name) for t in list_taps(model)]
    rewritten, counts = xnnpack_int8_taps(plain, keys)
    return plain, rewritten, counts, keys


def _run(content: bytes, images: np.ndarray, kernels: str) -> tuple[dict, dict, int]:
    """Dequantised outputs per signature key, their int8 (scale, zero point), and the number of delegate
    partitions."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = {"xnnpack": OpResolverType.BUILTIN,
                "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    it = Interpreter(model_content=content, experimental_op_resolver_type=resolver[kernels])
    it.allocate_tensors()
    runner = it.get_signature_runner()
    details = runner.get_output_details()
    outputs: dict[str, list] = {k: [] for k in details}
    for image in images:
        for key, value in runner(image=image[None]).items():
            scale, zero = details[key]["quantization"]
            outputs[key].append((value.astype(np.float32) - zero) * np.float32(scale)
                                if value.dtype == np.int8 else value)
    partitions = sum(op["op_name"] == "DELEGATE" for op in it._get_ops_details())
    return ({k: np.concatenate(v) for k, v in outputs.items()},
            {k: d["quantization"] for k, d in details.items()}, partitions)


def test_rewrite_keeps_every_tap_value_and_joins_the_delegated_partitions(converted):
    plain, rewritten, counts, keys = converted
    assert counts["activations_rewritten"] >= 1 and counts["tap_dequantize_removed"] == len(keys)
    images = start_images(6, seed=3)
    for kernels in ("xnnpack", "builtin"):
        before, _, parts_before = _run(plain, images, kernels)
        after, quant, parts_after = _run(rewritten, images, kernels)
        assert sorted(before) == sorted(after) == sorted([*keys, "embedding"])
        np.testing.assert_array_equal(after["embedding"], before["embedding"])
        for key in keys:  # the same int8 codes; dequantised in numpy instead of by a DEQUANTIZE op
            scale, zero = quant[key]
            np.testing.assert_array_equal(np.round(after[key] / scale), np.round(before[key] / scale),
                                          err_msg=f"{kernels} {key}")
            np.testing.assert_allclose(after[key], before[key], rtol=1e-6, atol=0)
        if kernels == "xnnpack":
            # The head after the last tap (pooling, normalisation) may stay outside, as in the deploy model.
            assert parts_before > 2 >= parts_after, (parts_before, parts_after)


def test_exported_int8_probe_model_has_int8_taps_and_a_float_embedding(tmp_path):
    from test_ascent_fd import export_tiny

    from device.manifest import load_manifest, manifest_path_for
    from device.runtime import Runtime

    _, files = export_tiny(tmp_path, ("int8",))
    probe = files["int8"]["probe"]
    manifest = load_manifest(manifest_path_for(probe))
    outputs = {o["key"]: o for o in manifest["outputs"]}
    assert outputs["embedding"]["dtype"] == "float32"
    for out in outputs.values():
        if out["kind"] == "tap":
            assert out["dtype"] == "int8" and out["scale"] == out["int8"]["scale"]
    assert manifest["converter"]["options"]["tap_exposure"]["tap_dequantize_removed"] == len(outputs) - 1
    runtime = Runtime(probe)
    assert runtime.delegate_nodes == Runtime(files["int8"]["deploy"]).delegate_nodes  # as many partitions
    values = runtime.run(start_images(2))
    assert all(v.dtype == np.float32 for v in values.values())


def test_foreign_tap_finder_reads_add_of_zero_as_the_activation(converted, tmp_path):
    """The rewrite's ADD(x, 0) with a fused ReLU is that ReLU to the foreign tap finder: the same taps,
    pre-activation, as in the file before the rewrite (so faceprobe's own probe files check as a pair)."""
    from toolkit.foreign.graph import TFLiteGraph

    plain, rewritten, _, _ = converted
    found = {}
    for name, content in (("plain", plain), ("rewritten", rewritten)):
        (tmp_path / f"{name}.tflite").write_bytes(content)
        found[name] = [(c.tensor, c.op, c.shape, c.post_activation)
                       for c in TFLiteGraph.read(tmp_path / f"{name}.tflite").candidates()]
    assert found["rewritten"] == found["plain"]
    assert any(not post for *_, post in found["plain"])
