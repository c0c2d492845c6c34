"""``infleet pull``: copy one engine from an S3 engine store into a local folder.

What a serving pod's init container runs when the engine store is a bucket: the engine lands,
every file checked against the sha256 its manifest gives, in ``DEST/<engine key>`` (an
emptyDir the server container then mounts read-only), before the server starts, so the pod
turns ready only with a verified engine. A folder that is already complete (the container ran
before, in this pod) is kept.

A failure prints one line on stderr, writes it to the termination-message file (where the
operator reads why the pod does not start) and exits 1; the kubelet restarts the container
with a backoff, so a Secret or bucket fixed later is picked up without a new pod.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, metavar="s3://BUCKET/PREFIX",
                        help="the engine store (credentials and endpoint from "
                        "INFLEET_STORE_AWS_* or else AWS_* variables)")
    parser.add_argument("--engine", required=True, metavar="KEY",
                        help="the engine key (the folder name under engines/)")
    parser.add_argument("--dest", required=True, type=Path, metavar="DIR",
                        help="where DIR/KEY is written")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="timeout of one request, in seconds (default: 30)")
    parser.add_argument("--retries", type=int, default=3,
                        help="extra attempts after a transport error or a 5xx (default: 3)")
    parser.add_argument("--termination-log", type=Path, default=None,
                        help="failure message file (default /dev/termination-log; skipped "
                        "outside a pod)")


def run(args: argparse.Namespace) -> int:
    from infleet.errors import InfleetError
    from infleet.runtime.command import write_termination
    from infleet.runtime.errors import StoreError
    from infleet.runtime.fetch import Retries
    from infleet.runtime.s3store import S3EngineStore

    try:
        if not args.store.startswith("s3://"):
            raise StoreError(f"--store {args.store}: only s3:// stores are fetched from "
                             "(a volume store is mounted instead)")
        retries = Retries(timeout_s=args.timeout, retries=args.retries)
        with S3EngineStore(args.store, os.environ, retries) as store:
            path = store.download(args.engine, args.dest)
            if path is None:
                raise StoreError(f"engine {args.engine} is not in the store {store.uri} (no "
                                 "manifest: never uploaded, or deleted)")
    except InfleetError as e:
        write_termination(args.termination_log, f"infleet pull: {e}"[:4000])
        raise  # the CLI prints the one line and exits 1
    print(f"infleet pull: engine {args.engine} from {args.store} in {path}",
          file=sys.stderr)
    return 0
