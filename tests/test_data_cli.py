"""`faceprobe data synth` and `faceprobe data inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.cli import main


def test_synth_then_inspect(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "faces"
    assert main(["data", "synth", "--out", str(out), "--identities", "3", "--images", "4", "--size", "32",
                 "--seed", "2", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made == {"out": str(out), "identities": 3, "images_per_identity": 4, "size": 32, "seed": 2}
    assert main(["data", "inspect", str(out), "--size", "32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["identities"] == 3 and report["images"] == 12
    assert report["images_per_identity"] == {"id000": 4, "id001": 4, "id002": 4}
    assert report["source_sizes"] == {"32x32": 12} and report["skipped"] == 0


def test_inspect_reports_bad_files_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "faces"
    main(["data", "synth", "--out", str(out), "--identities", "2", "--images", "2", "--size", "32", "--json"])
    capsys.readouterr()
    (out / "id001" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (out / "id002").mkdir()
    assert main(["data", "inspect", str(out), "--size", "32"]) == 1
    table = capsys.readouterr().out
    assert "2 identities, 4 images" in table
    assert f"{out / 'id001' / 'broken.jpg'}: " in table
    assert "empty identity folders skipped: id002" in table
    assert main(["data", "inspect", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_help_explains_the_commands(capsys: pytest.CaptureFixture) -> None:
    for argv in (["data", "--help"], ["data", "synth", "--help"], ["data", "inspect", "--help"]):
        assert main(argv) == 0
    text = capsys.readouterr().out
    assert "identity folders" in text and "--identities" in text and "--crop" in text
