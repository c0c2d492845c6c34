"""The operator's Kubernetes API client: server-side apply, delete, events, reads. Async I/O.

kopf watches and indexes; it is not a client for writing children. This is a small one over
httpx: every write is a server-side apply with one field manager (``infleet``), so the
operator owns exactly the fields it sets and a restart re-applies the same objects. Writes are
counted (``infleet_operator_api_writes_total``) so tests can prove that a reconcile with
nothing changed writes nothing. Failures become :class:`ApiError`, whose ``retryable`` says
whether trying again may help (the handlers map it to kopf's TemporaryError).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from infleet.operator import metrics, naming
from infleet.operator.errors import ApiError, ApiUnavailable

log = logging.getLogger("infleet.operator")

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
APPLY = "application/apply-patch+yaml"
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

# (apiVersion, kind) -> (path prefix, plural). Every kind here is namespaced.
RESOURCES: dict[tuple[str, str], tuple[str, str]] = {
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "Event"): ("/api/v1", "events"),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments"),
    ("batch/v1", "Job"): ("/apis/batch/v1", "jobs"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): (
        "/apis/gateway.networking.k8s.io/v1", "httproutes"),
    ("infleet.dev/v1alpha1", "InferenceDeployment"): (
        "/apis/infleet.dev/v1alpha1", "inferencedeployments"),
}


def _wrote(verb: str, kind: str, namespace: str, name: str) -> None:
    """Count a write and log it: the log says what the count is made of (a reconcile with
    nothing changed writes nothing, and a test that finds a write names it from here)."""
    metrics.API_WRITES.labels(verb, kind).inc()
    log.info("wrote: %s %s %s/%s", verb, kind, namespace, name)


@dataclass(frozen=True, slots=True)
class Credentials:
    """How to reach and authenticate to the API server."""

    server: str
    ca_file: str | None = None
    insecure: bool = False
    token: str | None = None
    token_file: str | None = None
    """In a pod: the projected service-account token, re-read on each request (it rotates)."""
    cert_file: str | None = None
    key_file: str | None = None
    namespace: str | None = None

    def bearer(self) -> str | None:
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token


def load_credentials(kubeconfig: Path | None, context: str | None) -> Credentials:
    """From a kubeconfig (``--kubeconfig``, ``$KUBECONFIG`` or ~/.kube/config), or the pod's
    service account when running in a cluster without one."""
    from kubernetes import client, config

    in_pod = (SA_DIR / "token").is_file() and os.environ.get("KUBERNETES_SERVICE_HOST")
    cfg: Any = client.Configuration()
    if kubeconfig is None and not os.environ.get("KUBECONFIG") and in_pod:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        return Credentials(
            server=f"https://{host}:{port}", ca_file=str(SA_DIR / "ca.crt"),
            token_file=str(SA_DIR / "token"),
            namespace=(SA_DIR / "namespace").read_text().strip(),
        )
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig) if kubeconfig else None, context=context,
        client_configuration=cfg, persist_config=False,
    )
    keys = cfg.api_key or {}
    # The client keeps it as "authorization" (older) or "BearerToken" (v30+).
    auth = keys.get("BearerToken") or keys.get("authorization") or ""
    return Credentials(
        server=cfg.host,
        ca_file=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        token=auth.removeprefix("Bearer ").strip() or None,
        cert_file=cfg.cert_file,
        key_file=cfg.key_file,
    )


def _ssl(creds: Credentials) -> ssl.SSLContext | bool:
    if creds.insecure:
        return False
    ctx = ssl.create_default_context(cafile=creds.ca_file)
    if creds.cert_file and creds.key_file:
        ctx.load_cert_chain(creds.cert_file, creds.key_file)
    return ctx


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    prefix, plural = RESOURCES[(api_version, kind)]
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


class KubeClient:
    """One connection pool to the API server for every reconcile."""

    def __init__(self, creds: Credentials, timeout_s: float = 15.0) -> None:
        self.creds = creds
        self._http = httpx.AsyncClient(
            base_url=creds.server, verify=_ssl(creds), timeout=timeout_s,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )

    async def close(self) -> None:
        await self._http.aclose()

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        out = {"Accept": "application/json"}
        token = self.creds.bearer()
        if token:
            out["Authorization"] = f"Bearer {token}"
        if content_type:
            out["Content-Type"] = content_type
        return out

    async def _request(
        self, method: str, path: str, *, body: Any = None, content_type: str | None = None,
        params: Mapping[str, str] | None = None, what: str,
    ) -> httpx.Response:
        content = json.dumps(body).encode() if body is not None else None
        try:
            response = await self._http.request(
                method, path, content=content, params=params,
                headers=self._headers(content_type or ("application/json" if content else None)),
            )
        except httpx.HTTPError as e:
            # Some of httpx's errors (its timeouts) carry no message: name the kind.
            said = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise ApiUnavailable(f"{what}: cannot reach the API server: {said}",
                                 status=0) from e
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            error = ApiUnavailable if response.status_code in RETRYABLE_STATUS else ApiError
            raise error(f"{what}: {response.status_code} {message}"[:2000],
                        status=response.status_code)
        return response

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply (create or update) of one object, owning the fields it sets."""
        meta = manifest["metadata"]
        kind = str(manifest["kind"])
        path = object_path(str(manifest["apiVersion"]), kind, meta["namespace"], meta["name"])
        response = await self._request(
            "PATCH", path, body=manifest, content_type=APPLY,
            params={"fieldManager": naming.FIELD_MANAGER, "force": "true"},
            what=f"apply {kind} {meta['namespace']}/{meta['name']}",
        )
        _wrote("apply", kind, meta["namespace"], meta["name"])
        result: dict[str, Any] = response.json()
        return result

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        """Create an object that is never updated (a build Job: its pod template is
        immutable); False when it exists already (another reconcile or replica made it)."""
        meta = manifest["metadata"]
        kind = str(manifest["kind"])
        path = object_path(str(manifest["apiVersion"]), kind, meta["namespace"])
        try:
            await self._request("POST", path, body=manifest,
                                params={"fieldManager": naming.FIELD_MANAGER},
                                what=f"create {kind} {meta['namespace']}/{meta['name']}")
        except ApiError as e:
            if e.status == 409:
                return False
            raise
        _wrote("create", kind, meta["namespace"], meta["name"])
        return True

    async def apply_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        path = object_path(api_version, kind, namespace, name) + "/status"
        body = {"apiVersion": api_version, "kind": kind,
                "metadata": {"name": name, "namespace": namespace}, "status": status}
        await self._request(
            "PATCH", path, body=body, content_type=APPLY,
            params={"fieldManager": naming.FIELD_MANAGER, "force": "true"},
            what=f"status of {kind} {namespace}/{name}",
        )
        _wrote("apply-status", kind, namespace, name)

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        path = object_path(api_version, kind, namespace, name)
        try:
            await self._request(
                "DELETE", path, body={"propagationPolicy": "Background"},
                what=f"delete {kind} {namespace}/{name}",
            )
        except ApiError as e:
            if e.status != 404:
                raise
            return
        _wrote("delete", kind, namespace, name)

    async def get(self, api_version: str, kind: str, namespace: str, name: str
                  ) -> dict[str, Any] | None:
        try:
            response = await self._request(
                "GET", object_path(api_version, kind, namespace, name),
                what=f"read {kind} {namespace}/{name}",
            )
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        result: dict[str, Any] = response.json()
        return result

    async def serves(self, group_version: str, kind: str) -> bool:
        """Whether the API server serves ``kind`` in ``group_version`` (discovery)."""
        try:
            response = await self._request("GET", f"/apis/{group_version}",
                                           what=f"discovery of {group_version}")
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return any(r.get("kind") == kind for r in response.json().get("resources") or ())

    async def event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> None:
        meta = involved["metadata"]
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"], "kind": involved["kind"],
                "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid"),
            },
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": "infleet"}, "reportingComponent": "infleet",
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        await self._request("POST", object_path("v1", "Event", meta["namespace"]), body=body,
                            what=f"event {reason} on {meta['namespace']}/{meta['name']}")
        _wrote("create", "Event", meta["namespace"], f"{meta['name']} {reason}")
