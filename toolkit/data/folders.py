"""Identity-folder datasets: one sub-folder per person, any image format, loaded into a FaceSet."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .align import align_face, aligner
from .crop import crop_face, face_detector, resize_square
from .decode import UnreadableImage, read_image
from .faceset import FaceSet, natural_key
from .identities import parse_identities

# How many skipped paths a warning lists before summarising the rest (all are kept in FaceSet.skipped).
_LISTED = 10


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _identity_files(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to try as images, and entries that cannot be (nested folders)."""
    files, skipped = [], []
    for entry in sorted(filter(_visible, folder.iterdir()), key=lambda p: natural_key(p.name)):
        if entry.is_dir():
            skipped.append((str(entry), "folder inside an identity folder (images must sit directly in it)"))
        else:
            files.append(entry)
    return files, skipped


def load_identity_folders(root: str | Path, image_size: int = 112, crop: bool = False,
                          min_identities: int = 2, progress: bool = True, align: bool = False,
                          identities: str | Sequence[str] | None = None) -> FaceSet:
    """Load ``root/<identity>/<image>`` into a FaceSet of ``image_size`` square RGB images.

    Files directly under ``root`` and hidden entries are not part of any identity and are ignored. Every
    other file is decoded (any format OpenCV reads; Pillow for GIF and the rest); unreadable files are
    skipped and reported by path, folders left without images are reported as empty identities.
    ``crop=True`` crops around the largest detected face (centre crop when none is found); otherwise the
    whole image is resized, as for datasets of face crops. ``align=True`` makes dlib's aligned chip of the
    largest face (see `align`); images without a face are loaded as ``crop`` says and listed in
    ``crop_fallbacks``. ``identities``: only these people (a selection such as "s31-s40", or a list of
    names); the other folders are not read.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {root} does not exist "
                                "(expected one sub-folder per identity)")
    if not root.is_dir():
        raise ValueError(f"{root} is a file; give the folder that holds one sub-folder per identity")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    if crop or align:
        face_detector()  # fail before loading anything when detection is impossible
    if align:
        aligner()
    folders = sorted((p for p in root.iterdir() if p.is_dir() and _visible(p)),
                     key=lambda p: natural_key(p.name))
    wanted = None
    if identities is not None:
        wanted = parse_identities(identities)
        unknown = sorted(set(wanted) - {f.name for f in folders}, key=natural_key)
        if unknown:
            shown = ", ".join(f.name for f in folders[:5]) + (", ..." if len(folders) > 5 else "")
            raise ValueError(f"unknown identities {unknown}; {root} has {len(folders)} identities ({shown})")
        folders = [f for f in folders if f.name in set(wanted)]
        min_identities = min(min_identities, len(set(wanted)))

    skipped: list[tuple[str, str]] = []
    jobs: list[tuple[str, Path]] = []
    for folder in folders:
        files, nested = _identity_files(folder)
        skipped += nested
        jobs += [(folder.name, f) for f in files]

    images, names_per_image, paths, sizes, fallbacks = [], [], [], [], []
    for name, path in tqdm(jobs, desc=f"loading {root.name}", unit="img", disable=not progress, leave=False):
        try:
            rgb = read_image(path)
        except (UnreadableImage, OSError) as exc:
            skipped.append((str(path), str(exc)))
            continue
        sizes.append(rgb.shape[:2])
        chip = align_face(rgb, image_size) if align else None
        if align and chip is None:
            fallbacks.append(str(path))
        if crop and chip is None:
            rgb, found = crop_face(rgb)
            if not found and not align:
                fallbacks.append(str(path))
        images.append(chip if chip is not None else resize_square(rgb, image_size))
        names_per_image.append(name)
        paths.append(str(path))

    names = sorted(set(names_per_image), key=natural_key)
    empty = [f.name for f in folders if f.name not in set(names)]
    _warn(root, skipped, empty, fallbacks, "centre crop" if crop else "whole image")
    _warn_thin(root, image_size, names_per_image, paths, sizes)
    if len(names) < min_identities:
        raise ValueError(
            f"{root} has {len(names)} usable identities, need at least {min_identities} "
            f"({len(folders)} sub-folders, {len(skipped)} unreadable files, {len(empty)} empty identities); "
            "put each person's images in their own sub-folder of it")
    index = {n: i for i, n in enumerate(names)}
    faces = FaceSet(
        images=np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8),
        labels=np.array([index[n] for n in names_per_image], np.int64),
        names=names,
        paths=paths,
        skipped=skipped,
        empty_identities=empty,
        source_sizes=np.array(sizes, np.int64).reshape(-1, 2),
        crop_fallbacks=fallbacks,
    )
    return faces if wanted is None else faces.select(wanted)  # names an identity left without images


def _warn_thin(root: Path, image_size: int, names_per_image: list[str], paths: list[str],
               sizes: list[tuple[int, int]]) -> None:
    """Data that loads but is thin: images enlarged to the input size, people with a single photo."""
    small = [(p, hw) for p, hw in zip(paths, sizes, strict=True) if min(hw) < image_size]
    if small:
        h, w = min((hw for _, hw in small), key=lambda hw: hw[0] * hw[1])
        warnings.warn(f"{len(small)} images in {root} are smaller than the model's {image_size} px input "
                      f"and were enlarged (smallest {w}x{h}, first: {small[0][0]}); features seen at that "
                      "scale may not be the model's", stacklevel=3)
    counts = Counter(names_per_image)
    single = sorted((n for n, c in counts.items() if c == 1), key=natural_key)
    if single:
        listed = ", ".join(single[:_LISTED]) + (f" and {len(single) - _LISTED} more" if len(single) > _LISTED
                                                 else "")
        warnings.warn(f"{len(single)} identities in {root} have a single image ({listed}): they give no "
                      "same-person pairs for verification and little to learn from", stacklevel=3)


def _warn(root: Path, skipped: list[tuple[str, str]], empty: list[str], fallbacks: list[str],
          used: str = "centre crop") -> None:
    if skipped:
        listed = "; ".join(f"{p}: {r}" for p, r in skipped[:_LISTED])
        more = f"; and {len(skipped) - _LISTED} more" if len(skipped) > _LISTED else ""
        warnings.warn(f"skipped {len(skipped)} unusable files in {root}: {listed}{more}", stacklevel=3)
    if empty:
        warnings.warn(f"skipped {len(empty)} identity folders without a usable image in {root}: "
                      f"{', '.join(empty)}", stacklevel=3)
    if fallbacks:
        listed = ", ".join(fallbacks[:_LISTED]) + (f" and {len(fallbacks) - _LISTED} more"
                                                   if len(fallbacks) > _LISTED else "")
        warnings.warn(f"no face found in {len(fallbacks)} images in {root}; used the {used} for them: "
                      f"{listed}", stacklevel=3)
