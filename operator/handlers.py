"""The kopf handlers: indexes that keep the observed world in memory, thin event handlers
that wake the right deployment, and one reconcile loop (a daemon) per InferenceDeployment.

The daemon is the drift timer that child events can wake early: it reconciles, then waits for
a poke (its spec changed, one of its pods turned ready, a build it waits for finished) or for
``reconcileIntervalSeconds``, whichever comes first. One loop per object means one reconcile
at a time per object, whatever wakes it. The create/resume/update handlers only validate and
wake it; nothing in them writes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from typing import Any

import kopf

from infleet.api import GROUP, PLURAL, VERSION, parse_spec
from infleet.api.errors import SpecError
from infleet.operator import autoscaler, metrics, naming, observed, reconcile
from infleet.operator.engines import parse_record
from infleet.operator.errors import ApiError
from infleet.operator.state import OperatorState
from infleet.scheduler.hardware import key_label_signature

log = logging.getLogger("infleet.operator")

BUILD = {naming.COMPONENT_LABEL: naming.COMPONENT_BUILD}
SERVING = {naming.COMPONENT_LABEL: naming.COMPONENT_SERVING}
MANAGED = {naming.MANAGED_BY_LABEL: naming.MANAGED_BY}
RECORDS = {naming.RECORD_LABEL: "true"}
OWNED_SERVING = {**MANAGED, **SERVING}
RETRY_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


def _backoff(failures: int) -> float:
    """The wait before retry ``failures``, jittered by +-25%: deployments that failed together
    (an API server that was down, a timeout under load) must not all retry together and fail
    together again."""
    base = RETRY_BACKOFF_S[min(failures, len(RETRY_BACKOFF_S)) - 1]
    return base * random.uniform(0.75, 1.25)  # noqa: S311 (jitter, not a secret)


def _state(memo: Any) -> OperatorState:
    state: OperatorState = memo.infleet
    return state


def _owner(labels: Mapping[str, str]) -> str | None:
    return labels.get(naming.DEPLOYMENT_LABEL)


def register(registry: kopf.OperatorRegistry) -> None:
    """Every handler of the operator, on ``registry``."""
    on = {"registry": registry}

    # --- indexes: the observed world, reduced to the views the planner reads -------------
    @kopf.index("nodes", id="nodes_index", **on)  # type: ignore[arg-type]
    def nodes_index(body: kopf.Body, **_: Any) -> dict[str, Any]:
        return {"nodes": observed.node_view(body)}

    @kopf.index("pods", id="pod_usage_index", **on)  # type: ignore[arg-type]
    def pod_usage_index(body: kopf.Body, **_: Any) -> dict[str, Any] | None:
        usage = observed.pod_usage(body)
        return {usage.node: usage} if usage is not None else None

    @kopf.index("batch", "v1", "jobs", labels=BUILD, id="jobs_index", **on)  # type: ignore[arg-type]
    def jobs_index(body: kopf.Body, namespace: str, **_: Any) -> dict[Any, Any]:
        job = observed.job_view(body)
        return {(namespace, job.build_key): job}

    @kopf.index("pods", labels=BUILD, id="build_pods_index", **on)  # type: ignore[arg-type]
    def build_pods_index(body: kopf.Body, namespace: str, labels: Mapping[str, str],
                         **_: Any) -> dict[Any, Any] | None:
        pod = observed.build_pod(body)
        key = labels.get(naming.BUILD_KEY_LABEL)
        return {(namespace, key): pod} if pod is not None and key else None

    @kopf.index("pods", labels=SERVING, id="serving_pods_index", **on)  # type: ignore[arg-type]
    def serving_pods_index(body: kopf.Body, namespace: str, labels: Mapping[str, str],
                           **_: Any) -> dict[Any, Any] | None:
        owner = _owner(labels)
        return {(namespace, owner): observed.serving_pod(body)} if owner else None

    @kopf.index("apps", "v1", "deployments", labels=OWNED_SERVING, id="deployments_index", **on)  # type: ignore[arg-type]
    def deployments_index(body: kopf.Body, namespace: str, labels: Mapping[str, str],
                          **_: Any) -> dict[Any, Any] | None:
        owner = _owner(labels)
        return {(namespace, owner): observed.serving_set(dict(body))} if owner else None

    @kopf.index("services", labels=MANAGED, id="services_index", **on)  # type: ignore[arg-type]
    def services_index(body: kopf.Body, namespace: str, labels: Mapping[str, str],
                       **_: Any) -> dict[Any, Any] | None:
        owner = _owner(labels)
        return {(namespace, owner): observed.kept(body)} if owner else None

    @kopf.index("configmaps", labels=RECORDS, id="records_index", **on)  # type: ignore[arg-type]
    def records_index(body: kopf.Body, namespace: str, labels: Mapping[str, str],
                      **_: Any) -> dict[Any, Any] | None:
        key = labels.get(naming.BUILD_KEY_LABEL)
        if not key:
            return None
        return {(namespace, key): (parse_record(body.get("data") or {}), observed.kept(body))}

    # --- wake-ups ---------------------------------------------------------------------------
    @kopf.on.event("pods", labels=SERVING, id="serving_pod_changed", **on)  # type: ignore[arg-type]
    def serving_pod_changed(namespace: str, labels: Mapping[str, str], memo: Any,
                            **_: Any) -> None:
        owner = _owner(labels)
        if owner:
            _state(memo).poke((namespace, owner))

    @kopf.on.event("apps", "v1", "deployments", labels=OWNED_SERVING, id="deployment_changed", **on)  # type: ignore[arg-type]
    def deployment_changed(namespace: str, labels: Mapping[str, str], memo: Any,
                           **_: Any) -> None:
        owner = _owner(labels)
        if owner:
            _state(memo).poke((namespace, owner))

    @kopf.on.event("batch", "v1", "jobs", labels=BUILD, id="build_job_changed", **on)  # type: ignore[arg-type]
    def build_job_changed(namespace: str, labels: Mapping[str, str], memo: Any,
                          **_: Any) -> None:
        key = labels.get(naming.BUILD_KEY_LABEL)
        if key:
            _state(memo).poke_waiters(namespace, key)

    @kopf.on.event("pods", labels=BUILD, id="build_pod_changed", **on)  # type: ignore[arg-type]
    def build_pod_changed(namespace: str, labels: Mapping[str, str], memo: Any,
                          **_: Any) -> None:
        key = labels.get(naming.BUILD_KEY_LABEL)
        if key:
            _state(memo).poke_waiters(namespace, key)

    @kopf.on.event("nodes", id="node_changed", **on)  # type: ignore[arg-type]
    def node_changed(body: kopf.Body, name: str, type: str | None, memo: Any,
                     **_: Any) -> None:
        # Heartbeats change nodes every few seconds; only a change of what classes are made
        # of (labels, readiness, allocatable, taints) wakes the deployments.
        state = _state(memo)
        if type == "DELETED":
            state.node_signatures.pop(name, None)
            state.poke_all()
            return
        node = observed.node_view(body)
        signature = (key_label_signature(node), node.ready, node.unschedulable,
                     node.allocatable, node.taints)
        if state.node_signatures.get(name) != signature:
            known = name in state.node_signatures
            state.node_signatures[name] = signature
            if known or state.started:
                state.poke_all()

    # --- the InferenceDeployment itself ---------------------------------------------------
    @kopf.on.resume(GROUP, VERSION, PLURAL, id="spec_changed", **on)  # type: ignore[arg-type]
    @kopf.on.create(GROUP, VERSION, PLURAL, id="spec_changed", **on)  # type: ignore[arg-type]
    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", id="spec_changed", **on)  # type: ignore[arg-type]
    def spec_changed(spec: Mapping[str, Any], namespace: str, name: str, memo: Any,
                     **_: Any) -> None:
        """Validate and wake the loop. An invalid spec fails once and for good (the API
        server's CEL rules refuse most; this catches what they cannot)."""
        _state(memo).poke((namespace, name))
        try:
            parse_spec(dict(spec))
        except SpecError as e:
            raise kopf.PermanentError(str(e)) from e

    @kopf.on.delete(GROUP, VERSION, PLURAL, optional=True, id="deleted", **on)  # type: ignore[arg-type]
    def deleted(namespace: str, name: str, memo: Any, **_: Any) -> None:
        # optional=True: no finalizer. Children go with the garbage collector (owner
        # references); engine records and the store stay.
        _state(memo).forget((namespace, name))

    @kopf.daemon(GROUP, VERSION, PLURAL, id="reconcile_loop", cancellation_timeout=10, **on)  # type: ignore[arg-type]
    async def reconcile_loop(stopped: kopf.DaemonStopped, body: kopf.Body, namespace: str,
                             name: str, memo: Any, **kwargs: Any) -> None:
        state = _state(memo)
        ref = (namespace, name)
        ix = reconcile.Indexes(
            nodes=kwargs["nodes_index"], pod_usage=kwargs["pod_usage_index"],
            jobs=kwargs["jobs_index"], build_pods=kwargs["build_pods_index"],
            serving_pods=kwargs["serving_pods_index"], deployments=kwargs["deployments_index"],
            services=kwargs["services_index"], records=kwargs["records_index"],
        )
        failures = 0
        while not stopped:
            try:
                async with state.slots:
                    await reconcile.reconcile(state, ix, dict(body))
                failures = 0
                state.refusals.pop(ref, None)
                wait = state.config.reconcile_interval_seconds
                tick = autoscaler.seconds_to_next_tick(state, ref)
                if tick is not None:
                    wait = min(wait, tick)
            except ApiError as e:
                # Transient (timeouts, 5xx, conflicts) and permanent refusals alike are
                # retried with a growing backoff: a refusal may come from RBAC or a webhook
                # that someone fixes; it is logged, never crash-looped.
                failures += 1
                wait = _backoff(failures)
                level = logging.WARNING if e.retryable else logging.ERROR
                log.log(level, "%s/%s: %s (retrying in %.0fs)", namespace, name, e, wait)
                metrics.RECONCILES.labels("retry").inc()
                if not e.retryable:
                    await reconcile.refused(state, dict(body), e, wait)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                wait = _backoff(failures)
                log.exception("%s/%s: reconcile failed (retrying in %.0fs)", namespace, name,
                              wait)
                metrics.RECONCILES.labels("error").inc()
            if stopped:
                break
            await state.wait(ref, wait, stopped.wait())
        state.forget(ref)
        autoscaler.forget(state, ref)
