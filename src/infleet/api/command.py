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
    from infleet.api.render import CRD_FILE, render_yaml

    text = render_yaml()
    target: Path = args.output or CRD_FILE
    if args.output is None and not CRD_FILE.parent.is_dir():
        print("no crds/ folder here (not a source checkout): give -o FILE or -o -", file=sys.stderr)
        return 1
    if args.check:
        if not target.exists() or target.read_text() != text:
            print(f"{target} is stale: run `infleet crds`", file=sys.stderr)
            return 1
        return 0
    if str(target) == "-":
        sys.stdout.write(text)
    else:
        target.write_text(text)
        print(f"wrote {target}")
    return 0
