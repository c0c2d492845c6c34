"""Whether a desired manifest differs from the object that exists. Pure.

Server-side apply of an unchanged manifest changes nothing, but it is still a write (a
request, an audit entry, a conflict check); the planner sends only manifests that differ.
"Differ" is a subset test: every field the desired manifest sets must be present with an
equal value in the observed object, which also carries what the API server defaulted
(``imagePullPolicy``, ``terminationMessagePath``, ...) and what other managers own (status,
the Deployment controller's annotations). A field someone else changed (drift) fails the test,
so the next apply puts it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infleet.scheduler.inventory import parse_quantity

_QUANTITY_KEYS = frozenset({"cpu", "memory", "nvidia.com/gpu", "ephemeral-storage", "sizeLimit"})


def _equal_scalar(key: str | None, want: Any, have: Any) -> bool:
    if want == have:
        return True
    if key in _QUANTITY_KEYS and isinstance(want, str | int) and isinstance(have, str | int):
        # The API server normalises quantities ("1024Mi" may come back as "1Gi").
        try:
            return parse_quantity(want) == parse_quantity(have)
        except ValueError:
            return False
    return False


def contains(observed: Any, desired: Any, key: str | None = None) -> bool:
    """Every field of ``desired`` is in ``observed`` with an equal value."""
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return False
        return all(k in observed and contains(observed[k], v, k) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(observed, list) or len(observed) != len(desired):
            return False
        return all(contains(o, d, key) for o, d in zip(observed, desired, strict=True))
    return _equal_scalar(key, desired, observed)


def needs_apply(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    if observed is None:
        return True
    want = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}
    return not contains(observed, want)
