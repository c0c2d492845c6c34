"""The error hierarchy: one name per class, every class drawn in the root tree, and the
retryable/permanent split the operator and `infleet build` rely on."""

from __future__ import annotations

import importlib
import pkgutil

import infleet
from infleet import errors as root
from infleet.errors import InfleetError


def _all_errors() -> list[type[InfleetError]]:
    # Import every module of the distribution, so every errors module has defined its classes.
    # infleet.operator has no __init__.py (it must never be importable as `operator`), and
    # walk_packages does not descend into such namespace packages: it is walked on its own.
    operator = importlib.import_module("infleet.operator")
    for path, prefix in ((infleet.__path__, "infleet."), (operator.__path__, "infleet.operator.")):
        for module in pkgutil.walk_packages(path, prefix):
            if module.name.endswith("__main__") or ".zoo." in module.name:
                continue
            importlib.import_module(module.name)
    seen: list[type[InfleetError]] = []
    todo = [InfleetError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("infleet.") and sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return seen


def test_one_name_per_class() -> None:
    by_name: dict[str, set[str]] = {}
    for cls in _all_errors():
        by_name.setdefault(cls.__name__, set()).add(f"{cls.__module__}.{cls.__qualname__}")
    clashes = {name: places for name, places in by_name.items() if len(places) > 1}
    assert not clashes


def test_the_root_tree_draws_every_class() -> None:
    tree = root.__doc__ or ""
    missing = sorted(c.__name__ for c in _all_errors() if f"── {c.__name__}" not in tree)
    assert not missing, f"add these to the tree in src/infleet/errors.py: {missing}"


def test_retryable_is_declared_by_class_and_inherited() -> None:
    from infleet.operator import errors as operator
    from infleet.runtime import errors as runtime
    from infleet.runtime.server import errors as server
    from infleet.scheduler import errors as scheduler

    assert InfleetError.retryable is False
    transient = {runtime.SourceUnreachable, runtime.StoreError, server.Unavailable,
                 scheduler.ClusterReadError, operator.ApiUnavailable}  # fmt: skip
    assert {c for c in _all_errors() if c.retryable and c.__base__ not in transient} == transient
    assert server.Overloaded.retryable and server.NotReady.retryable  # inherited
    for permanent in (runtime.ChecksumMismatch, runtime.ShapeError, runtime.UnsupportedModel,
                      runtime.AccuracyGateFailed, runtime.BackendUnavailable):  # fmt: skip
        assert permanent.retryable is False
    assert server.BackendUnavailable is runtime.BackendUnavailable  # one class, one name
