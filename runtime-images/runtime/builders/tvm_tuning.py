"""The TVM builder's tuning records: the MetaSchedule JSON database kept in the engine store,
and what the build notes say about a tuning run.

The store keeps one database per (model, target, TVM version) under ``tuning/<key>/``. A build
tunes into a private copy and publishes it back only when it holds more records than before,
after dropping lines a killed tuner left half-written: the shared database is never the one a
tuner writes, so a crash or a time-out cannot corrupt what the next build reads.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


@dataclass(frozen=True)
class ChildOutcome:
    """How the tuner child ended: ``reason`` None for a clean exit, else why not; ``report``
    its last JSON line ({"tasks", "tuned", "reused"}), empty when it printed none."""

    reason: str | None
    report: dict[str, Any] = field(default_factory=dict)


def last_json(output: str) -> dict[str, Any]:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return {}


def count_records(db: Path) -> int:
    try:
        return sum(1 for line in (db / RECORDS).read_text().splitlines() if line.strip())
    except OSError:
        return 0


def copy_database(shared: Path | None, work: Path) -> None:
    """The store's database (when there is one) as the starting point of this build's."""
    work.mkdir(parents=True, exist_ok=True)
    for name in (WORKLOADS, RECORDS):
        source = shared / name if shared is not None else None
        if source is not None and source.exists():
            shutil.copyfile(source, work / name)
        else:
            (work / name).touch()


def _valid_lines(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    kept = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            break  # a tuner killed mid-write leaves a partial last line; nothing follows it
        kept.append(line)
    return kept


def repair_database(db: Path) -> int:
    """Drops what a killed tuner left half-written; the number of records kept."""
    workloads = _valid_lines(db / WORKLOADS)
    records = [
        line
        for line in _valid_lines(db / RECORDS)
        if isinstance(json.loads(line), list) and json.loads(line)[0] < len(workloads)
    ]
    for name, lines in ((WORKLOADS, workloads), (RECORDS, records)):
        (db / name).write_text("".join(f"{line}\n" for line in lines))
    return len(records)


def publish_database(work: Path, shared: Path) -> None:
    """Replaces the store's database by this build's (a superset of it), file by file by
    atomic rename; readers see the old files or the new ones."""
    shared.mkdir(parents=True, exist_ok=True)
    for name in (WORKLOADS, RECORDS):
        tmp = shared / f".{name}.{os.getpid()}"
        shutil.copyfile(work / name, tmp)
        tmp.replace(shared / name)


def note(
    outcome: ChildOutcome, key: str, trials: int, before: int, kept: int, seconds: float
) -> str:
    """The build note of one tuning run: what it cost, what it produced, what was reused."""
    r = outcome.report
    tasks, tuned, reused = r.get("tasks"), r.get("tuned", r.get("to_tune")), r.get("reused")
    new = kept - before
    if outcome.reason is None and tuned == 0:
        return (
            f"tvm: tuned: all {tasks} tasks had records in the store's tuning database {key} "
            f"({kept} records); no new trials"
        )
    if outcome.reason is None:
        return (
            f"tvm: tuned with MetaSchedule: {tuned} of {tasks} tasks, {trials} trials each, "
            f"{new} new records in {seconds:.0f}s"
            + (f"; {reused} tasks reused from the store ({key})" if reused else f" ({key})")
        )
    if kept > 0:
        return (
            f"tvm: tuning stopped ({outcome.reason}) after {seconds:.0f}s; applied the "
            f"{kept} records measured ({new} new), default schedules elsewhere ({key})"
        )
    return (
        f"tvm: untuned: MetaSchedule tuning failed ({outcome.reason}) after {seconds:.0f}s; "
        "serving the untuned engine (default schedules)"
    )
