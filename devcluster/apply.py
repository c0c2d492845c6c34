"""Server-side apply of the few kinds of objects the dev cluster installs itself (the Gateway
API CRDs and their admission policy, RBAC, namespaces, the StorageClass, the Gateway).

One field manager, so applying the same objects again changes nothing; a refusal raises
ClusterStartError with the API server's own message.
"""

from __future__ import annotations

import json
from typing import Any

from infleet.devcluster.errors import ClusterStartError

FIELD_MANAGER = "infleet-dev"
APPLY = "application/apply-patch+yaml"

# (apiVersion, kind) -> (plural, namespaced)
KINDS: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "Namespace"): ("namespaces", False),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): ("customresourcedefinitions", False),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"):
        ("validatingadmissionpolicies", False),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"):
        ("validatingadmissionpolicybindings", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ("clusterrolebindings", False),
    ("storage.k8s.io/v1", "StorageClass"): ("storageclasses", False),
    ("gateway.networking.k8s.io/v1", "GatewayClass"): ("gatewayclasses", False),
    ("gateway.networking.k8s.io/v1", "Gateway"): ("gateways", True),
}


def resource_path(obj: dict[str, Any]) -> str:
    """The object's URL path on the API server (pure)."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    known = KINDS.get((api_version, kind))
    if known is None:
        raise ClusterStartError(f"the dev cluster does not apply {kind} ({api_version}) objects")
    plural, namespaced = known
    meta = obj.get("metadata") or {}
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespaced:
        prefix += f"/namespaces/{meta.get('namespace') or 'default'}"
    return f"{prefix}/{plural}/{meta['name']}"


def _request(api_client: Any, method: str, path: str, body: Any = None,
             query: list[tuple[str, str]] | None = None, content_type: str = "") -> Any:
    """One authenticated request through the kubernetes client; returns (status, JSON)."""
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    args = api_client.param_serialize(method, path, query_params=query or [],
                                      header_params=headers, body=body,
                                      auth_settings=["BearerToken"])
    response = api_client.call_api(*args)
    response.read()
    return response.status, json.loads(response.data or b"null")


def apply(api_client: Any, obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply one object; returns the object as the server stored it."""
    status, stored = _request(api_client, "PATCH", resource_path(obj), obj,
                              [("fieldManager", FIELD_MANAGER), ("force", "true")], APPLY)
    if status >= 300:
        reason = stored.get("message") if isinstance(stored, dict) else stored
        raise ClusterStartError(
            f"the API server refused {obj.get('kind')} {obj['metadata']['name']}: {reason}"
        )
    result: dict[str, Any] = stored
    return result


def get(api_client: Any, obj: dict[str, Any]) -> dict[str, Any]:
    """Read an object back (for its status); ClusterStartError when it cannot."""
    status, current = _request(api_client, "GET", resource_path(obj))
    if status >= 300:
        reason = current.get("message") if isinstance(current, dict) else current
        raise ClusterStartError(f"cannot read {obj.get('kind')} {obj['metadata']['name']}: "
                                f"{reason}")
    result: dict[str, Any] = current
    return result
