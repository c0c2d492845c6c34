"""The package layout promises of DESIGN.md, checked."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BACKENDS = ("onnxruntime", "tvm", "tensorrt", "torch", "onnx")


def test_operator_folder_is_never_a_top_level_package() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()
    out = subprocess.run(
        [sys.executable, "-c", "import operator, infleet.operator; print(operator.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(out.stdout.strip()).parent != ROOT / "operator"
    assert "site-packages" not in out.stdout and out.stdout.strip().endswith("operator.py")


def test_no_repo_folder_shadows_the_import_root() -> None:
    # The root package lives in src/infleet/: a top-level infleet/ would be imported instead
    # of the mapped package whenever Python runs from the repository root.
    assert not (ROOT / "infleet").exists(), "a top-level infleet/ folder shadows the package"


def test_import_names_match_folder_names() -> None:
    """A reader finds a module's folder from its import name: the last part of each mapped
    folder is the last part of its import name (the product card's runtime-images/ holds
    infleet.runtime in runtime-images/runtime/)."""
    for name, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        assert Path(folder).name == name.rsplit(".", 1)[-1], f"{folder} holds {name}"
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        parts = package.split(".")
        mapped = max(
            (n for n in PYPROJECT["tool"]["setuptools"]["package-dir"] if
             package == n or package.startswith(n + ".")),
            key=len,
        )
        folder = ROOT / PYPROJECT["tool"]["setuptools"]["package-dir"][mapped]
        folder = folder.joinpath(*parts[len(mapped.split(".")):])
        assert folder.is_dir(), f"{package} has no folder {folder.relative_to(ROOT)}"


def _nested(folder: Path, other: Path, path: Path) -> bool:
    return other != folder and other.is_relative_to(folder) and path.is_relative_to(other)


def test_every_python_folder_is_a_listed_package() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    mapped = {Path(folder): name for name, folder in setuptools["package-dir"].items()}
    listed = set(setuptools["packages"])
    for folder, root_name in mapped.items():
        for py in (ROOT / folder).rglob("*.py"):
            rel = py.parent.relative_to(ROOT / folder)
            if any(_nested(folder, other, folder / rel) for other in mapped):
                continue  # checked under the deeper folder's own mapping
            name = ".".join([root_name, *rel.parts])
            assert name in listed, f"{py.relative_to(ROOT)} is in {name}, missing from pyproject"


def test_operator_and_scheduler_never_import_a_backend() -> None:
    code = f"""
import importlib, pkgutil, sys
import infleet.operator, infleet.scheduler, infleet.api, infleet.cli
for pkg in (infleet.operator, infleet.scheduler, infleet.api):
    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(mod.name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {BACKENDS!r})
print(",".join(loaded))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"backend modules imported: {out.stdout}"


def test_cli_help_lists_only_registered_commands() -> None:
    from infleet.cli import COMMANDS

    env = {**os.environ, "COLUMNS": "200"}  # one line per command: argparse wraps at the width
    out = subprocess.run(
        [sys.executable, "-m", "infleet", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    # the lines under "COMMAND", up to the blank line: "  name   help text" each
    section = out.stdout.split("\n  COMMAND\n", 1)[1].split("\n\n", 1)[0]
    listed = [line.split(None, 1) for line in section.splitlines()]
    # every registered command with its help, in order, and nothing else
    assert listed == [[name, text] for name, (_, text) in COMMANDS.items()], out.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "infleet", "nosuch"], capture_output=True, text=True, env=env
    )
    assert refused.returncode == 2 and "invalid choice: 'nosuch'" in refused.stderr


def test_crds_check_passes_on_the_committed_file() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "infleet", "crds", "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
