"""What the operator keeps in memory between reconciles (kopf's ``memo``).

Nothing here is the source of truth: the cluster is. A restarted operator starts with an empty
state and converges to the same children, because the planner reads everything it needs
back from the API (records, Jobs, children, the previous status). The state only makes the
operator prompt (who to wake when a build finishes) and spares repeated work (test inferences
already passed on the current engine).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import httpx

from infleet.api.config import OperatorConfig
from infleet.operator.autoscaler import Memory
from infleet.operator.kube import KubeClient
from infleet.operator.planner import ProbeResult
from infleet.scheduler.policy import ClusterPolicy

Ref = tuple[str, str]
"""(namespace, name) of an InferenceDeployment."""

RECENT_WRITE_S = 10.0
"""How long a write of ours stands in for the watch that has not delivered it yet."""


@dataclass
class RecentWrites:
    """What this operator wrote in the last few seconds, by (namespace, kind, name).

    Reconciles compare the desired objects and status with what the watches delivered, and a
    watch lags a write by a moment: a reconcile poked in that moment (a pod event, a build
    that finished) would see its own last write missing and write it again. A write is
    skipped when the same content was written within ``RECENT_WRITE_S``; after that the
    watched object alone decides, so drift made by others is still corrected.
    """

    entries: dict[tuple[str, str, str], tuple[float, Any]] = field(default_factory=dict)

    def written(self, key: tuple[str, str, str], content: Any, now: float) -> bool:
        entry = self.entries.get(key)
        return entry is not None and now - entry[0] < RECENT_WRITE_S and entry[1] == content

    def forget(self, key: tuple[str, str, str]) -> None:
        self.entries.pop(key, None)

    def remember(self, key: tuple[str, str, str], content: Any, now: float) -> None:
        self.entries[key] = (now, content)
        if len(self.entries) > 4096:  # drop the stale ones now and then; never grows unbounded
            self.entries = {k: v for k, v in self.entries.items()
                            if now - v[0] < RECENT_WRITE_S}


@dataclass
class OperatorState:
    config: OperatorConfig
    policy: ClusterPolicy
    kube: KubeClient
    http: httpx.AsyncClient
    """For test inferences to serving pods."""
    identity: str = "infleet"
    pokes: dict[Ref, asyncio.Event] = field(default_factory=dict)
    waiting: dict[tuple[str, str], set[Ref]] = field(default_factory=lambda: defaultdict(set))
    """(namespace, build key) -> deployments waiting for that build."""
    probes: dict[Ref, dict[str, ProbeResult]] = field(default_factory=dict)
    node_signatures: dict[str, tuple[object, ...]] = field(default_factory=dict)
    autoscale: dict[Ref, Memory] = field(default_factory=dict)
    """The autoscaler's memory per deployment."""
    recent: RecentWrites = field(default_factory=RecentWrites)
    refusals: dict[Ref, str] = field(default_factory=dict)
    """The API's last refusal per deployment, told once as an Event until a reconcile passes."""
    gateway_api: bool | None = None
    gateway_checked: float = 0.0
    started: bool = False

    def poke(self, ref: Ref) -> None:
        event = self.pokes.get(ref)
        if event is not None:
            event.set()

    def poke_all(self) -> None:
        for event in self.pokes.values():
            event.set()

    def poke_waiters(self, namespace: str, build_key: str) -> None:
        for ref in list(self.waiting.get((namespace, build_key), ())):
            self.poke(ref)

    async def wait(self, ref: Ref, timeout: float, stopped: Awaitable[Any] | None = None) -> None:
        """Until poked, ``stopped`` completes, or ``timeout`` seconds passed."""
        event = self.pokes.setdefault(ref, asyncio.Event())
        waiters = [asyncio.ensure_future(event.wait())]
        if stopped is not None:
            waiters.append(asyncio.ensure_future(stopped))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        event.clear()

    def set_waiting(self, ref: Ref, namespace: str, keys: tuple[str, ...]) -> None:
        for waiters in self.waiting.values():
            waiters.discard(ref)
        for key in keys:
            self.waiting[(namespace, key)].add(ref)

    def forget(self, ref: Ref) -> None:
        self.pokes.pop(ref, None)
        self.refusals.pop(ref, None)
        self.probes.pop(ref, None)
        self.autoscale.pop(ref, None)
        for waiters in self.waiting.values():
            waiters.discard(ref)
