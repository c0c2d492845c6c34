"""``infleet crds``: write (or check) the CRD rendered from the API models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="file to write (default: the committed crds/ file); '-' for stdout",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the committed CRD differs from what the models render",
    )


def run(args: argparse.Namespace) -> int:
    from infleet.api.render import CRD_FILE, PEERING_FILE, render_peering_yaml, render_yaml

    if args.output is not None:  # one file: the InferenceDeployment CRD
        files = {args.output: render_yaml()}
    elif CRD_FILE.parent.is_dir():
        files = {CRD_FILE: render_yaml(), PEERING_FILE: render_peering_yaml()}
    else:
        print("no crds/ folder here (not a source checkout): give -o FILE or -o -", file=sys.stderr)
        return 1
    if args.check:
        stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
        for path in stale:
            print(f"{path} is stale: run `infleet crds`", file=sys.stderr)
        return 1 if stale else 0
    for target, text in files.items():
        if str(target) == "-":
            sys.stdout.write(text)
        else:
            target.write_text(text)
            print(f"wrote {target}")
    return 0
