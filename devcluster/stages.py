"""kwok's Stage file for one cluster (pure): ``data/kwok-stages.yaml`` with the simulated
engine build filled in from the fleet profile.

The ``engine-build-simulated`` Stage ends a pod labelled ``app.kubernetes.io/component:
engine-build`` on a kwok node with a :class:`~infleet.api.engine.BuildSummary` marked
``simulated`` as its termination message: ``engine_key`` ``simulated``, ``backend`` from the
pod annotation ``infleet.dev/backend``, ``precision`` the first rung of the annotation
``infleet.dev/precision-ladder`` (comma-separated), ``node_class`` from the pod label
``infleet.dev/class``, and ``profile`` the nominal points of the node's fleet class
(``nominalProfile`` in the profile). A pod that lacks one of them, or a class without nominal
points, ends Failed with a :class:`~infleet.api.engine.BuildFailure` naming what is missing.
The valid backends and precisions come from the API's enums, so the Stage and the API agree.
"""

from __future__ import annotations

import json
from pathlib import Path

from infleet.api.spec import Backend, Precision
from infleet.devcluster.fleet import Executor, Profile

TEMPLATE = Path(__file__).resolve().parent / "data" / "kwok-stages.yaml"
BUILD_COMPONENT = "engine-build"


def nominal_profiles(profile: Profile) -> dict[str, list[dict[str, float]]]:
    """Fleet class -> its nominal latency points (simulated classes that give them)."""
    return {
        c.name: [p.model_dump() for p in c.nominalProfile]
        for c in profile.classes
        if c.executor is Executor.KWOK and c.nominalProfile
    }


def _go_list(values: list[str]) -> str:
    return " ".join(json.dumps(v) for v in values)


def render(profile: Profile) -> str:
    """The Stage documents kwok runs with for this profile."""
    profiles = json.dumps(nominal_profiles(profile), separators=(",", ":"), sort_keys=True)
    if "`" in profiles:  # cannot happen with pydantic numbers and DNS-label class names
        raise ValueError("a nominal profile cannot hold a backquote")
    backends = [b.value for b in Backend]
    precisions = [p.value for p in Precision]
    text = TEMPLATE.read_text()
    for key, value in {
        "__NOMINAL_PROFILES__": profiles,
        "__BACKENDS_TEXT__": ", ".join(backends),
        "__PRECISIONS_TEXT__": ", ".join(precisions),
        "__BACKENDS__": _go_list(backends),
        "__PRECISIONS__": _go_list(precisions),
    }.items():
        text = text.replace(key, value)
    return text
