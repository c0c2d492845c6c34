"""Shared pytest setup. The local control plane's fixtures (``dev_cluster``, ``kube``,
``namespace``) and wait helpers live in support.cluster; they start nothing until a
test asks for them.

With ``INFLEET_FAIL_ON_SKIP=1`` (``.ci/run`` sets it) a skipped test is a failure: CI
installs every backend and tool the suite needs, so a skip there means coverage silently
lost (an ``importorskip`` whose package went missing, say). The one exception is a test
marked ``gpu``: CI has no GPU, and those skips are listed with their reason at the end.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["support.cluster", "support.operator"]

FAIL_ON_SKIP = "INFLEET_FAIL_ON_SKIP"
_ALLOWED = pytest.StashKey[list[str]]()


def _strict() -> bool:
    return os.environ.get(FAIL_ON_SKIP, "") not in ("", "0")


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: why")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _refuse(report: pytest.TestReport | pytest.CollectReport, what: str) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"{what} was skipped ({_reason(report)}), and {FAIL_ON_SKIP} allows no skip "
        "outside the gpu marker: install what it needs, or mark it gpu if only a GPU "
        "machine can run it"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ALLOWED] = []
    if _strict():  # a file refused at collection must not hide how the rest of the run went
        config.option.continue_on_collection_errors = True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not (report.skipped and _strict()) or hasattr(report, "wasxfail"):
        return
    if item.get_closest_marker("gpu") is not None:
        item.config.stash[_ALLOWED].append(f"{item.nodeid}: {_reason(report)}")
        return
    _refuse(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # type: ignore[no-untyped-def]
    # a module-level importorskip skips the whole file at collection, before any marker
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if report.skipped and _strict():
        _refuse(report, collector.nodeid)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    allowed = config.stash.get(_ALLOWED, [])
    if _strict() and allowed:
        terminalreporter.section(f"skipped, allowed by {FAIL_ON_SKIP} (gpu marker)")
        for line in allowed:
            terminalreporter.line(line)
