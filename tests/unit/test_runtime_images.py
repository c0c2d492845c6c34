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
        "operator.Dockerfile",
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
    if dockerfile.name == "operator.Dockerfile":
        # the operator needs the base dependencies only (kopf, kubernetes, pydantic, httpx)
        assert installed == [] and re.search(r'wheel-dir /wheels "\."$', text, re.MULTILINE)
    else:
        assert installed, f"{dockerfile.name} installs no infleet extras"
        backend = dockerfile.name.removesuffix(".Dockerfile")
        if backend == "tensorrt":  # TensorRT is the NVIDIA base image's, checked on import
            assert "gpu" in ",".join(installed).split(",") and "import tensorrt" in text
        else:
            assert backend in ",".join(installed).split(","), (dockerfile.name, installed)
        assert re.search(r"^FROM .* AS build$", text, re.MULTILINE), "multi-stage"
        assert "serve" in ",".join(installed)
    for extra in ",".join(installed).split(","):
        if extra:
            assert extra in EXTRAS, f"{dockerfile.name}: extra {extra!r} is not in pyproject"
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root"), "image must run non-root"
    assert re.search(r'^ENTRYPOINT \["infleet"\]', text, re.MULTILINE)


def test_entrypoints_match_what_the_chart_and_the_operator_run() -> None:
    # The chart's StatefulSet and the operator's build Jobs and serving pods all run
    # command ["infleet"], the console script pyproject declares.
    import yaml

    from infleet.api import Backend
    from infleet.api.config import OperatorConfig

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["infleet"] == "infleet.cli:main"
    sts = (ROOT / "charts" / "infleet" / "templates" / "statefulset.yaml").read_text()
    assert "command: [infleet]" in sts
    values = yaml.safe_load((ROOT / "charts" / "infleet" / "values.yaml").read_text())
    assert values["image"]["repository"].endswith("/operator")
    images = OperatorConfig().images
    for backend in Backend:
        assert f"runtime-{backend.value}:" in images.for_backend(backend)
        assert (ROOT / "runtime-images" / f"{backend.value}.Dockerfile").is_file()
