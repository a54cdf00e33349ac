"""`faceprobe deploy`: push a TFLite model and its manifest to one board agent or several."""

from __future__ import annotations

import argparse
import json
import os

from device.cli import TOKEN_ENV

from . import agent_trust, agent_trust_options


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "deploy", help="push a .tflite + manifest to board agents",
        description="Upload MODEL.tflite (with the .manifest.json beside it) to every agent that does not "
                    "hold it yet. Agents address models by sha256, so re-deploying is free.")
    p.add_argument("model", help="the .tflite written by `faceprobe export`")
    p.add_argument("--agent", required=True, help="agent URL(s), comma-separated: http://HOST:PORT[,...]")
    p.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_ENV})")
    p.add_argument("--manifest", default=None, help="manifest path (default: <model stem>.manifest.json)")
    p.add_argument("--json", action="store_true", help="print {agent: model id} as JSON")
    agent_trust_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..remote import deploy

    ids = deploy(args.agent, args.model, token=args.token or os.environ.get(TOKEN_ENV),
                 manifest=args.manifest, trust=agent_trust(args))
    if args.json:
        print(json.dumps(ids, indent=2))
    else:
        for url, model_id in ids.items():
            print(f"{url}  {model_id}")
    return 0
