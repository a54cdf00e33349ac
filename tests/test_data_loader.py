"""Identity-folder loading: formats, bad files, empty identities, natural order, ORL."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from toolkit.data import FaceSet, load_identity_folders
from toolkit.data.crop import centre_crop, resize_square, square_crop
from toolkit.data.crop import detect_face as crop_face_box
from toolkit.data.decode import UnreadableImage, decode_image

ORL = Path(__file__).parents[1] / ".." / "shared" / "data" / "att_faces"
SIZE = 32


def _photo(seed: int, h: int = 48, w: int = 40) -> np.ndarray:
    """A smooth RGB test picture (JPEG keeps it close)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 200, 3)
    return np.clip(base + np.stack([xx * 2.0, yy * 1.5, (xx + yy) * 1.0], -1), 0, 255).astype(np.uint8)


def _encode(rgb: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(rgb)
    if fmt == "PPM":  # binary PGM (P5) from a grey picture
        img = img.convert("L")
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """alice: PNG, JPEG, PGM, GIF, TGA (Pillow only); bob: two PNGs and four bad files; carol: empty;
    dave: only a text file."""
    root = tmp_path / "faces"
    for d in ("alice", "bob", "carol", "dave"):
        (root / d).mkdir(parents=True)
    (root / "README.txt").write_text("not an identity")
    (root / "alice" / "a.png").write_bytes(_encode(_photo(0), "PNG"))
    (root / "alice" / "b.jpg").write_bytes(_encode(_photo(1), "JPEG"))
    pgm = _encode(_photo(2), "PPM")
    assert pgm.startswith(b"P5")
    (root / "alice" / "c.pgm").write_bytes(pgm)
    (root / "alice" / "d.gif").write_bytes(_encode(_photo(3), "GIF"))
    (root / "alice" / "e.tga").write_bytes(_encode(_photo(4), "TGA"))
    (root / "bob" / "1.png").write_bytes(_encode(_photo(4), "PNG"))
    (root / "bob" / "2.png").write_bytes(_encode(_photo(5), "PNG"))
    (root / "bob" / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(500))
    jpeg = _encode(_photo(6, 120, 100), "JPEG")
    (root / "bob" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    png = _encode(_photo(7), "PNG")
    (root / "bob" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "bob" / "empty.png").write_bytes(b"")
    (root / "dave" / "notes.txt").write_text("hello")
    return root


def test_messy_folder_loads_good_files_and_reports_every_bad_one(messy: Path) -> None:
    with pytest.warns(UserWarning) as record:
        fs = load_identity_folders(messy, image_size=SIZE, progress=False)
    assert fs.names == ["alice", "bob"]
    assert fs.counts() == {"alice": 5, "bob": 2}
    assert fs.images.shape == (7, SIZE, SIZE, 3) and fs.images.dtype == np.uint8
    assert fs.labels.tolist() == [0, 0, 0, 0, 0, 1, 1]
    bad = {Path(p).name: reason for p, reason in fs.skipped}
    assert set(bad) == {"corrupt.png", "truncated.jpg", "truncated.png", "empty.png", "notes.txt"}
    assert all(str(messy) in p for p, _ in fs.skipped)  # reported by full path
    assert "truncated" in bad["truncated.jpg"]
    assert fs.empty_identities == ["carol", "dave"]
    messages = " ".join(str(w.message) for w in record)
    assert "skipped 5 unusable files" in messages and "carol, dave" in messages
    summary = fs.summary()
    assert summary["skipped"] == 5 and summary["empty_identities"] == ["carol", "dave"]
    assert summary["source_sizes"] == {"40x48": 7}


def test_each_format_decodes_to_the_right_pixels(messy: Path) -> None:
    with pytest.warns(UserWarning):
        fs = load_identity_folders(messy, image_size=SIZE, progress=False)
    by_name = {Path(p).name: img for p, img in zip(fs.paths, fs.images, strict=True)}

    def expected(rgb: np.ndarray) -> np.ndarray:
        return cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(int)

    assert np.array_equal(by_name["a.png"], expected(_photo(0)))  # lossless: exact
    assert np.abs(by_name["b.jpg"].astype(int) - expected(_photo(1))).mean() < 3  # lossy: close
    grey = by_name["c.pgm"]
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    grey_ref = cv2.cvtColor(_photo(2), cv2.COLOR_RGB2GRAY)
    assert np.abs(grey[..., 0].astype(int) - expected(np.dstack([grey_ref] * 3))[..., 0]).max() <= 2
    assert np.abs(by_name["d.gif"].astype(int) - expected(_photo(3))).mean() < 8  # 256-colour palette
    assert np.array_equal(by_name["e.tga"], expected(_photo(4)))


def test_fewer_than_two_identities_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.png").write_bytes(_encode(_photo(0), "PNG"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "y.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="1 usable identities, need at least 2"):
        load_identity_folders(tmp_path, image_size=SIZE, progress=False)
    with pytest.warns(UserWarning) as record:
        fs = load_identity_folders(tmp_path, image_size=SIZE, min_identities=1, progress=False)
    assert fs.names == ["only"] and fs.empty_identities == ["broken"]
    assert any(str(w.message).endswith("without a usable image in " + str(tmp_path) + ": broken")
               for w in record)


def test_missing_folder_and_bad_size(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_identity_folders(tmp_path / "nope", progress=False)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        load_identity_folders(tmp_path / "file.png", progress=False)
    with pytest.raises(ValueError, match="image_size"):
        load_identity_folders(tmp_path, image_size=4, progress=False)


def test_identities_sort_naturally(tmp_path: Path) -> None:
    for name in ("s10", "s2", "s1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "1.png").write_bytes(_encode(_photo(0), "PNG"))
    fs = load_identity_folders(tmp_path, image_size=SIZE, progress=False)
    assert fs.names == ["s1", "s2", "s10"]
    assert [Path(p).parent.name for p in fs.paths] == ["s1", "s2", "s10"]


def test_decode_rejects_garbage_with_a_reason() -> None:
    with pytest.raises(UnreadableImage, match="empty file"):
        decode_image(b"")
    with pytest.raises(UnreadableImage, match="not a decodable image"):
        decode_image(b"GIF89a" + b"\x00" * 20)
    rgba = np.dstack([_photo(0), np.full((48, 40), 128, np.uint8)])
    assert np.array_equal(decode_image(_encode(rgba, "PNG")), _photo(0))  # alpha dropped


def test_crop_helpers() -> None:
    img = np.arange(30 * 50 * 3, dtype=np.int64).reshape(30, 50, 3).astype(np.uint8)
    c = centre_crop(img)
    assert c.shape == (30, 30, 3) and np.array_equal(c, img[:, 10:40])
    edge = square_crop(img, 0, 0, 20)  # half outside: padded with the border
    assert edge.shape == (20, 20, 3) and np.array_equal(edge[10:, 10:], img[:10, :10])
    assert np.array_equal(edge[0, 0], img[0, 0])
    assert resize_square(img, 16).shape == (16, 16, 3)


def test_crop_without_a_face_falls_back_to_centre_crop(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "1.png").write_bytes(_encode(_photo(0, 60, 100), "PNG"))
    with pytest.warns(UserWarning, match="no face found in 2 images"):
        fs = load_identity_folders(tmp_path, image_size=SIZE, crop=True, progress=False)
    assert len(fs.crop_fallbacks) == 2 and fs.summary()["crop_fallbacks"] == 2
    assert np.array_equal(fs.images[0], resize_square(centre_crop(_photo(0, 60, 100)), SIZE))


def test_crop_finds_a_real_face_off_centre(tmp_path: Path) -> None:
    """An ORL face pasted into the corner of a large dark photo is found and cropped around."""
    if not ORL.is_dir():
        pytest.skip(f"ORL faces not found at {ORL}")
    face = np.asarray(Image.open(ORL / "s1" / "1.pgm").convert("RGB"))  # 112 high, 92 wide
    for i, name in enumerate(("a", "b")):
        canvas = np.full((360, 480, 3), 30, np.uint8)
        y, x = 20 + 200 * i, 340
        canvas[y:y + 112, x:x + 92] = face
        (tmp_path / name).mkdir()
        (tmp_path / name / "1.png").write_bytes(_encode(canvas, "PNG"))
        box = crop_face_box(canvas)
        assert box is not None
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        assert abs(cx - (x + 46)) < 20 and abs(cy - (y + 56)) < 25
    fs = load_identity_folders(tmp_path, image_size=SIZE, crop=True, progress=False)
    assert fs.crop_fallbacks == []
    # The crop is the face, not the dark canvas around it.
    assert fs.images.mean() > 60


def test_faceset_subset_and_select_reindex() -> None:
    images = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    fs = FaceSet(images, np.array([0, 0, 1, 1, 2, 2]), ["a", "b", "c"], [f"x/{i}.png" for i in range(6)])
    sub = fs.subset([5, 0, 4])
    assert sub.names == ["a", "c"] and sub.labels.tolist() == [1, 0, 1]
    assert sub.images[:, 0, 0, 0].tolist() == [5, 0, 4]
    sel = fs.select(["c", "b"])
    assert sel.names == ["b", "c"] and sel.labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="unknown identities"):
        fs.select(["z"])
    with pytest.raises(ValueError, match="one to one"):
        FaceSet(images, np.zeros(5), ["a"], ["p"] * 6)


def test_orl_loads_forty_by_ten() -> None:
    if not ORL.is_dir():
        pytest.skip(f"shared ORL faces not found at {ORL}")
    fs = load_identity_folders(ORL, image_size=64, progress=False)
    assert len(fs.names) == 40 and len(fs) == 400
    assert fs.names[:3] == ["s1", "s2", "s3"] and fs.names[-1] == "s40"
    assert set(fs.counts().values()) == {10}
    assert fs.skipped == [] and fs.empty_identities == []
    assert fs.summary()["source_sizes"] == {"92x112": 400}
    assert np.array_equal(fs.images[..., 0], fs.images[..., 2])  # grey → three equal channels
    assert 60 < fs.images.mean() < 160


def test_identities_argument_reads_only_the_named_folders(tmp_path) -> None:
    """``identities=`` selects before decoding: a broken image in another person's folder is never read."""
    import warnings

    for name in ("s1", "s2", "s3"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (16, 16), (40 * i, 60, 90)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "s3" / "broken.png").write_bytes(b"not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a skipped file would warn
        fs = load_identity_folders(tmp_path, image_size=16, progress=False, identities="s1-s2")
    assert fs.names == ["s1", "s2"] and len(fs) == 4
    assert load_identity_folders(tmp_path, image_size=16, progress=False, identities=["s2"]).names == ["s2"]
    with pytest.raises(ValueError, match="unknown identities \\['s9'\\]"):
        load_identity_folders(tmp_path, image_size=16, progress=False, identities="s1,s9")
