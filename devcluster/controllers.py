"""Small controllers of the executor process (threads): they do the I/O of the pure plans in
:mod:`infleet.devcluster.endpoints` and :mod:`infleet.devcluster.volumes`.

``EndpointsController`` keeps the FQDN EndpointSlices of the executor's pods: it learns pods
from the executor's own pod watches (``pod_event``) and Services from a watch of its own, and
re-plans a namespace whenever one of them changes there.

``VolumeProvisioner`` is the ``infleet-local`` StorageClass's dynamic provisioner: on every
change of a claim or a volume (and every 30 s) it lists both and carries out the plan:
reclaim, then create, then an Event on each claim it refuses.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infleet.devcluster import endpoints, volumes

log = logging.getLogger("infleet.devcluster.executor")
APPLY = "application/apply-patch+yaml"
FIELD_MANAGER = "infleet-local-executor"


class Debounced:
    """A set of dirty keys and a worker that drains it (one pass handles many changes)."""

    def __init__(self) -> None:
        self._dirty: set[str] = set()
        self._cond = threading.Condition()

    def mark(self, key: str) -> None:
        with self._cond:
            self._dirty.add(key)
            self._cond.notify()

    def take(self, stopping: threading.Event, timeout: float = 1.0) -> set[str]:
        with self._cond:
            if not self._dirty:
                self._cond.wait(timeout)
            dirty, self._dirty = self._dirty, set()
        return dirty if not stopping.is_set() else set()


def watch_forever(list_call: Callable[..., Any], on_list: Callable[[list[dict[str, Any]]], None],
                  on_event: Callable[[str, dict[str, Any]], None], stopping: threading.Event,
                  what: str) -> None:
    """List, then watch from that list's version; list again when the watch expires (410)."""
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    while not stopping.is_set():
        try:
            listed = json.loads(list_call(_preload_content=False).data)
            on_list(listed["items"])
            w: Any = watch.Watch()  # type: ignore[no-untyped-call]
            for event in w.stream(list_call, resource_version=listed["metadata"]["resourceVersion"],
                                  timeout_seconds=60, deserialize=False):
                if stopping.is_set():
                    w.stop()
                    break
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    on_event(event["type"], event["object"])
        except ApiException as e:
            if e.status != 410:
                log.warning("watch of %s failed: %s", what, e)
                stopping.wait(1)
        except Exception:
            if not stopping.is_set():
                log.exception("watch of %s failed", what)
                stopping.wait(1)


class EndpointsController:
    def __init__(self, api: Any, stopping: threading.Event) -> None:
        from kubernetes import client

        self.core: Any = client.CoreV1Api(api)
        self.discovery: Any = client.DiscoveryV1Api(api)
        self.stopping = stopping
        self.pods: dict[str, dict[str, Any]] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.applied: dict[tuple[str, str], str] = {}  # (namespace, slice) -> applied JSON
        self.lock = threading.Lock()
        self.queue = Debounced()

    def start(self) -> None:
        # Slices an earlier run left: re-planned (kept, changed or deleted) on the first pass.
        listed = json.loads(self.discovery.list_endpoint_slice_for_all_namespaces(
            label_selector=f"{endpoints.MANAGED_BY_LABEL}={endpoints.MANAGED_BY}",
            _preload_content=False).data)
        for item in listed["items"]:
            self.applied[(item["metadata"]["namespace"], item["metadata"]["name"])] = ""
        threading.Thread(target=self._watch_services, name="endpoints-services",
                         daemon=True).start()
        threading.Thread(target=self._work, name="endpoints", daemon=True).start()

    def pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        with self.lock:
            if kind == "DELETED":
                self.pods.pop(meta["uid"], None)
            else:
                self.pods[meta["uid"]] = pod
        self.queue.mark(meta.get("namespace", "default"))

    def resync(self, node: str, pods: list[dict[str, Any]]) -> None:
        """A fresh list of one node's pods (after a watch restart some deletions were missed)."""
        namespaces = set()
        with self.lock:
            for uid, pod in list(self.pods.items()):
                if (pod.get("spec") or {}).get("nodeName") == node:
                    namespaces.add(pod["metadata"].get("namespace", "default"))
                    del self.pods[uid]
            for pod in pods:
                self.pods[pod["metadata"]["uid"]] = pod
                namespaces.add(pod["metadata"].get("namespace", "default"))
        for namespace in namespaces:
            self.queue.mark(namespace)

    def _service_event(self, kind: str, service: dict[str, Any]) -> None:
        meta = service["metadata"]
        key = (meta.get("namespace", "default"), meta["name"])
        with self.lock:
            if kind == "DELETED":
                self.services.pop(key, None)
            else:
                self.services[key] = service
        self.queue.mark(key[0])

    def _services_listed(self, items: list[dict[str, Any]]) -> None:
        with self.lock:
            self.services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s
                             for s in items}
            namespaces = {ns for ns, _ in self.services} | {
                p["metadata"].get("namespace", "default") for p in self.pods.values()}
        for namespace in namespaces:
            self.queue.mark(namespace)

    def _watch_services(self) -> None:
        watch_forever(self.core.list_service_for_all_namespaces, self._services_listed,
                      self._service_event, self.stopping, "services")

    def _work(self) -> None:
        while not self.stopping.is_set():
            for namespace in self.queue.take(self.stopping):
                try:
                    self._sync(namespace)
                except Exception:
                    log.exception("endpoint slices of namespace %s", namespace)
                    self.queue.mark(namespace)  # retried on the next pass
                    self.stopping.wait(1)

    def _sync(self, namespace: str) -> None:
        from kubernetes.client.exceptions import ApiException

        with self.lock:
            services = [s for (ns, _), s in self.services.items() if ns == namespace]
            pods = [p for p in self.pods.values()
                    if p["metadata"].get("namespace", "default") == namespace]
        wanted = {s["metadata"]["name"]: s for svc in services
                  for s in endpoints.desired_slices(svc, pods)}
        for name, body in wanted.items():
            text = json.dumps(body, sort_keys=True)
            if self.applied.get((namespace, name)) == text:
                continue
            self.discovery.patch_namespaced_endpoint_slice(
                name, namespace, body, field_manager=FIELD_MANAGER, force=True,
                _content_type=APPLY)
            self.applied[(namespace, name)] = text
        stale = [key for key in self.applied if key[0] == namespace and key[1] not in wanted]
        for key in stale:
            try:
                self.discovery.delete_namespaced_endpoint_slice(key[1], namespace)
            except ApiException as e:
                if e.status != 404:
                    raise
            del self.applied[key]


class VolumeProvisioner:
    """Provisions PVs for claims of the ``infleet-local`` class and reclaims them."""

    RESYNC_SECONDS = 30.0

    def __init__(self, api: Any, stopping: threading.Event, claims_root: Path) -> None:
        from kubernetes import client

        self.core: Any = client.CoreV1Api(api)
        self.stopping = stopping
        self.claims_root = claims_root.resolve()
        self.queue = Debounced()
        self.refused: set[str] = set()

    def start(self) -> None:
        def changed(*_: Any) -> None:
            self.queue.mark("all")

        for call, what in ((self.core.list_persistent_volume_claim_for_all_namespaces, "claims"),
                           (self.core.list_persistent_volume, "volumes")):
            threading.Thread(target=watch_forever, args=(call, changed, changed, self.stopping,
                                                         what),
                             name=f"provisioner-{what}", daemon=True).start()
        threading.Thread(target=self._work, name="provisioner", daemon=True).start()

    def _work(self) -> None:
        last = 0.0
        while not self.stopping.is_set():
            due = time.monotonic() - last >= self.RESYNC_SECONDS
            if self.queue.take(self.stopping) or due:
                last = time.monotonic()
                try:
                    self.sync()
                except Exception:
                    log.exception("volume provisioning failed; retrying")
                    self.queue.mark("all")
                    self.stopping.wait(1)

    def sync(self) -> None:
        from kubernetes.client.exceptions import ApiException

        # Volumes first: see volumes.plan.
        pvs = json.loads(self.core.list_persistent_volume(_preload_content=False).data)["items"]
        claims = json.loads(self.core.list_persistent_volume_claim_for_all_namespaces(
            _preload_content=False).data)["items"]
        plan = volumes.plan(claims, pvs, self.claims_root)
        for reclaim in plan.reclaim:
            folder = reclaim.folder.resolve()
            if folder.is_relative_to(self.claims_root) and folder != self.claims_root:
                shutil.rmtree(folder, ignore_errors=True)
            try:
                self.core.delete_persistent_volume(reclaim.pv)
            except ApiException as e:
                if e.status != 404:
                    raise
            log.info("reclaimed volume %s (%s)", reclaim.pv, folder)
        for pv in plan.create:
            Path(pv["spec"]["hostPath"]["path"]).mkdir(parents=True, exist_ok=True)
            try:
                self.core.create_persistent_volume(pv)
            except ApiException as e:
                if e.status != 409:
                    raise
            ref = pv["spec"]["claimRef"]
            log.info("provisioned %s for claim %s/%s", pv["metadata"]["name"], ref["namespace"],
                     ref["name"])
        for refusal in plan.refuse:
            if refusal.uid in self.refused:
                continue
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self.core.create_namespaced_event(refusal.namespace, {
                "metadata": {"generateName": f"{refusal.claim}."},
                "involvedObject": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                   "namespace": refusal.namespace, "name": refusal.claim,
                                   "uid": refusal.uid},
                "reason": "ProvisioningFailed", "type": "Warning", "message": refusal.message,
                "source": {"component": FIELD_MANAGER}, "count": 1,
                "firstTimestamp": stamp, "lastTimestamp": stamp,
            })
            self.refused.add(refusal.uid)
