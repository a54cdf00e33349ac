"""`faceprobe check --shift --disagreement`: identities under shift per corruption, judged by [shift]; the
disagreement ascent beside its random control; both in report.json, the printed summary and report.html."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from toolkit.cli import main  # noqa: E402
from toolkit.data.shift import CORRUPTIONS  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def quantized(untrained_int8):
    return untrained_int8(SIZE)[1:]


def check(quantized, tmp_path, gate: str, *flags: str) -> tuple[int, dict]:
    model, deploy = quantized
    path = tmp_path / "t.toml"  # an untrained model verifies at chance: open the data gate
    path.write_text("[data]\nmin_float_verification_accuracy = 0.0\n" + gate)
    code = main(["check", str(model), "--quantized", str(deploy), "--thresholds", str(path), "--sample", "4",
                 "--no-features", "--search", "never", "--out", str(tmp_path / "o"), *flags])
    return code, json.loads((tmp_path / "o" / "report.json").read_text())


def test_shift_table_disagreement_and_report(quantized, tmp_path, capsys):
    code, report = check(quantized, tmp_path, "[taps]\nmin_sqnr_db = -100\nmin_cosine = -1\n"
                         "[identities]\nmax_accuracy_drop_pp = 100\nmin_embedding_cosine = -1\n"
                         "max_flip_fraction = 1\n[shift]\nmax_accuracy_drop_pp = 100\n"
                         "max_worst_corruption_drop_pp = 100\nmax_flip_fraction = 1\n"
                         "[features]\nmin_worst_case_embedding_cosine = -1\n",
                         "--shift", "--disagreement", "--disagreement-images", "1")
    out = capsys.readouterr().out
    assert code == 0, out
    host = report["boards"][0]
    shift = host["shift"]
    assert [r["corruption"] for r in shift["corruptions"]] == list(CORRUPTIONS)
    assert len(shift["cells"]) == 3 * len(CORRUPTIONS) == shift["summary"]["cells"]
    assert all(0 <= c["flip_fraction"] <= 1 and np.isfinite(c["accuracy_drop_pp"]) for c in shift["cells"])
    assert shift["summary"]["accuracy_drop_se_pp"] > 0
    for name in CORRUPTIONS:  # the printed per-corruption table
        assert f"  {name}" in out
    names = {v["name"] for v in host["verdicts"]}
    assert {"shift_accuracy_drop_pp", "shift_worst_corruption_drop_pp", "shift_flip_fraction",
            "worst_case_embedding_cosine"} <= names
    d = host["disagreement"]["summary"]
    assert d["random_tries"] == 100 and d["budget_grey_levels"] == 8.0
    face = host["disagreement"]["faces"][0]
    assert face["worst_cosine"] <= face["start_cosine"] < 1.0
    assert d["worst_case_embedding_cosine"] == face["worst_cosine"]
    assert "disagreement within 8 grey levels" in out
    html = (tmp_path / "o" / "report.html").read_text()
    assert "Identities under shift" in html and "Disagreement ascent" in html
    assert (tmp_path / "o" / "figures" / "shift_board0.png").is_file()
    assert (tmp_path / "o" / "figures" / "disagreement_board0.png").is_file()


def test_shift_gate_fails_a_file_that_passes_on_clean_faces(quantized, tmp_path, capsys):
    # Clean identities open; under shift no decision may flip: int8 flips some on corrupted faces.
    code, report = check(quantized, tmp_path, "[taps]\nmin_sqnr_db = -100\nmin_cosine = -1\n"
                         "[identities]\nmax_accuracy_drop_pp = 100\nmin_embedding_cosine = -1\n"
                         "max_flip_fraction = 1\n[shift]\nmax_flip_fraction = 0.0\n", "--shift")
    assert code == 1
    failed = report["summary"]["failed_checks"]
    assert "host:shift_flip_fraction" in failed and all(f.startswith("host:shift_") for f in failed), failed
    assert all(v["passed"] for v in report["boards"][0]["verdicts"] if v["level"] != "shift")
    assert report["boards"][0]["shift"]["summary"]["flip_fraction"] > 0
