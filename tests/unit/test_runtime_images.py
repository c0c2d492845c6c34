"""The runtime images' Dockerfiles stay in step with the tree and pyproject.

No Docker engine runs here, so the images are not built in CI; this checks what can go stale
without one: every COPY source exists, every extra installed is defined, pods run non-root.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "runtime-images").glob("*.Dockerfile"))
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_one_image_per_backend() -> None:
    assert [d.name for d in DOCKERFILES] == [
        "onnxruntime.Dockerfile",
        "tensorrt.Dockerfile",
        "tvm.Dockerfile",
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_matches_the_tree(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    for line in text.splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} is missing"
    installed = re.findall(r'"\.\[([a-z,]+)\]"', text)
    assert installed, f"{dockerfile.name} installs no infleet extras"
    for extra in ",".join(installed).split(","):
        assert extra in EXTRAS, f"{dockerfile.name}: extra {extra!r} is not in pyproject"
    assert "serve" in ",".join(installed)
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root"), "image must run non-root"
    assert re.search(r'^ENTRYPOINT \["infleet"\]', text, re.MULTILINE)
