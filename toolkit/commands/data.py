"""`faceprobe data`: make a synthetic face dataset, or inspect an identity-folder dataset."""

from __future__ import annotations

import argparse
import json

from device.console import int_at_least, non_negative_int, positive_int

from . import writes_folder


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="make synthetic faces or inspect a face dataset",
        description="Face datasets are identity folders: DIR/<person>/<image>, any format OpenCV or Pillow "
                    "reads (JPEG, PNG, PGM, GIF, ...).")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    synth = sub.add_parser(
        "synth", help="write a synthetic face dataset (the embedded default)",
        description="Draw N identities x M images of synthetic faces as PNGs in identity folders. Each "
                    "identity is a parameter vector (face shape, skin tone, eye/brow/nose/mouth geometry, "
                    "hair); each image adds pose, scale, lighting, expression, glasses or occlusion, blur "
                    "and noise. The same settings always give the same images.")
    synth.add_argument("--out", required=True, metavar="DIR",
                       help="output folder (new or empty; --force replaces an earlier synthetic set)")
    synth.add_argument("--identities", type=int_at_least(2), default=20, metavar="N",
                       help="number of people (default 20)")
    synth.add_argument("--images", type=positive_int, default=10, metavar="M",
                       help="images per person (default 10)")
    synth.add_argument("--size", type=int_at_least(16), default=112, metavar="S",
                       help="image side in pixels (default 112)")
    synth.add_argument("--seed", type=non_negative_int, default=0, metavar="K",
                       help="random seed (default 0)")
    synth.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    writes_folder(synth, "synth.json")

    inspect = sub.add_parser(
        "inspect", help="count identities and images, list unreadable files",
        description="Load DIR as faceprobe would for training or evaluation and report images per identity, "
                    "original image sizes, unreadable files and empty identity folders. Exit code 0 when "
                    "every file was usable, 1 when some were skipped, 2 when the dataset is unusable.")
    inspect.add_argument("dir", metavar="DIR", help="dataset folder with one sub-folder per identity")
    inspect.add_argument("--crop", action="store_true",
                         help="detect and crop faces (OpenCV Haar cascade); report images without one")
    inspect.add_argument("--size", type=int_at_least(16), default=112, metavar="S",
                         help="side the images are resized to (default 112)")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return _synth(args) if args.data_command == "synth" else _inspect(args)


def _synth(args: argparse.Namespace) -> int:
    from ..data import synthesize

    out = synthesize(args.out, identities=args.identities, images_per_identity=args.images, size=args.size,
                     seed=args.seed, progress=not args.json)
    result = {"out": str(out), "identities": args.identities, "images_per_identity": args.images,
              "size": args.size, "seed": args.seed}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {args.identities} identities x {args.images} images "
              f"({args.size}x{args.size} PNG) to {out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import warnings

    from ..data import load_identity_folders

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # everything the warnings say is in the report below
        fs = load_identity_folders(args.dir, image_size=args.size, crop=args.crop, progress=not args.json)
    summary = {"dir": str(args.dir), **fs.summary(), "crop_fallback_files": list(fs.crop_fallbacks),
               "single_image_identities": [n for n, c in fs.counts().items() if c == 1],
               "enlarged_images": int((fs.source_sizes.min(axis=1) < args.size).sum()) if len(fs) else 0}
    if args.json:
        print(json.dumps(summary))
    else:
        print(_table(summary, args.crop))
    return 1 if fs.skipped or fs.empty_identities else 0


def _table(s: dict, crop: bool) -> str:
    counts = s["images_per_identity"]
    width = max(len("identity"), *(len(n) for n in counts))
    lines = [f"{s['dir']}: {s['identities']} identities, {s['images']} images "
             f"({s['min_images_per_identity']}-{s['max_images_per_identity']} per identity)",
             f"{'identity':<{width}}  images"]
    lines += [f"{name:<{width}}  {n:>6}" for name, n in counts.items()]
    lines.append("source sizes (WxH): " + ", ".join(f"{k} x{v}" for k, v in s["source_sizes"].items()))
    if s["enlarged_images"]:
        lines.append(f"images smaller than {s['image_shape'][0]} px (enlarged): {s['enlarged_images']}")
    if s["single_image_identities"]:
        lines.append(f"identities with a single image: {', '.join(s['single_image_identities'])}")
    if crop:
        lines.append(f"no face found (centre crop used): {s['crop_fallbacks']}")
        lines += [f"  {path}" for path in s["crop_fallback_files"]]
    lines.append(f"unreadable files skipped: {s['skipped']}")
    lines += [f"  {f['path']}: {f['reason']}" for f in s["skipped_files"]]
    if s["empty_identities"]:
        lines.append(f"empty identity folders skipped: {', '.join(s['empty_identities'])}")
    return "\n".join(lines)
