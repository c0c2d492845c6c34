"""Exclusive CPUs for Guaranteed containers, as the kubelet's static CPU manager gives them.

A container whose CPU request equals its limit and is a whole number of CPUs gets that many
CPUs of its own: the local executor sets the process's affinity to them, so the thread count
the server sizes from its affinity (``cpu_limit_threads``) is the pod's, and two such pods
on this machine run side by side instead of both spreading over every core. Without the
pinning one replica would take every core and a second would add no capacity, which is not
what a cluster does. Best effort: when more CPUs are asked for than the machine has, the
least-used ones are shared.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any


def exclusive_cpus(container: Mapping[str, Any]) -> int:
    """Whole CPUs a container is entitled to (0: it shares the machine)."""
    resources = container.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    cpu = limits.get("cpu")
    if cpu is None or requests.get("cpu", cpu) != cpu:
        return 0
    text = str(cpu)
    try:
        value = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return 0
    return int(value) if value >= 1 and value == int(value) else 0


class CpuPool:
    """The CPUs this executor may hand out, and how many containers hold each."""

    def __init__(self, cpus: tuple[int, ...] | None = None) -> None:
        self.cpus = cpus if cpus is not None else tuple(sorted(os.sched_getaffinity(0)))
        self._held: Counter[int] = Counter()
        self._lock = threading.Lock()

    def take(self, n: int) -> tuple[int, ...]:
        """``n`` CPUs, the least held first; all of them when ``n`` is not smaller."""
        with self._lock:
            if n >= len(self.cpus):
                chosen = self.cpus
            else:
                chosen = tuple(sorted(sorted(self.cpus, key=lambda c: (self._held[c], c))[:n]))
            self._held.update(chosen)
            return chosen

    def give(self, cpus: tuple[int, ...]) -> None:
        with self._lock:
            self._held.subtract(cpus)
