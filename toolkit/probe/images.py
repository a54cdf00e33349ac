"""Start images for a probe: one person's photos from an identity-folder dataset, or image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import load_identity_folders, natural_key
from ..data.align import align_face
from ..data.crop import resize_square
from ..data.decode import read_image


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
                  key=lambda p: natural_key(p.name))


def _load(path: Path, size: int, align: bool) -> np.ndarray:
    rgb = read_image(path)
    chip = align_face(rgb, size) if align else None
    if align and chip is None:
        raise ValueError(f"--align: no face found in {path}; pass other images or drop --align")
    return chip if chip is not None else resize_square(rgb, size)


def load_start_images(sources: list[str], size: int, count: int = 4, person: str | None = None,
                      progress: bool = True, align: bool = False) -> tuple[np.ndarray, str]:
    """Up to ``count`` uint8 (n, size, size, 3) images and a description of where they came from.

    ``sources``: one identity-folder dataset (photos of ``person``, default the first identity), one folder
    of image files, or image files. ``align``: dlib's aligned face chips (see `toolkit.data.align`)."""
    if not sources:
        raise ValueError("no start images: pass --images (a dataset of identity folders, a folder of "
                         "images, or image files)")
    paths = [Path(s) for s in sources]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"--images: {p} does not exist")
    if len(paths) == 1 and paths[0].is_dir() and any(c.is_dir() for c in paths[0].iterdir()):
        fs = load_identity_folders(paths[0], image_size=size, min_identities=1, progress=progress,
                                   align=align)
        name = person or fs.names[0]
        fs = fs.select([name])
        return fs.images[:count], f"{min(count, len(fs))} photos of {name} from {paths[0]}"
    if person is not None:
        raise ValueError("--person needs --images to be a dataset of identity folders")
    files = _image_files(paths[0]) if len(paths) == 1 and paths[0].is_dir() else paths
    if not files:
        raise ValueError(f"--images: no image files in {paths[0]}")
    images = np.stack([_load(f, size, align) for f in files[:count]])
    return images, f"{len(images)} image(s): {', '.join(f.name for f in files[:count])}"
