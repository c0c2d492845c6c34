"""The dev cluster's Gateway API implementation, Traefik v3: the objects and the static
configuration it runs with (pure; :mod:`infleet.devcluster.cluster` applies and starts them).

Traefik's Kubernetes Gateway provider watches GatewayClasses of its controller name, their
Gateways and the routes attached to them, and sends each request to the Ready addresses of the
backend Service's EndpointSlices, weighted round robin over a route's ``backendRefs``. No
kube-proxy is involved, so it reaches the local executor's ``127.x.y.z`` pods (whose
EndpointSlices the executor writes: :mod:`infleet.devcluster.endpoints`).

One Gateway, ``infleet-system/infleet``, with one HTTP listener that admits routes of every
namespace; routing is by the ``Host`` header (HTTPRoute ``hostnames``). Traefik serves it on a
free 127.0.0.1 port, the listener's ``port``, which is how its provider matches a listener to
an entry point.
"""

from __future__ import annotations

from typing import Any

NAMESPACE = "infleet-system"
NAME = "infleet"
CONTROLLER = "traefik.io/gateway-controller"
USER = "infleet:gateway"
LISTENER = "http"

# What Traefik's provider reads and writes (its documented ClusterRole), less what it needs only
# for features off here: pods (OpenTelemetry attributes) and TCPRoutes (experimental channel).
RULES: tuple[dict[str, Any], ...] = (
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["services", "secrets", "configmaps"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
     "verbs": ["list", "watch"]},
    {"apiGroups": ["gateway.networking.k8s.io"],
     "resources": ["gatewayclasses", "gateways", "httproutes", "grpcroutes", "tlsroutes",
                   "referencegrants", "backendtlspolicies"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["gateway.networking.k8s.io"],
     "resources": ["gatewayclasses/status", "gateways/status", "httproutes/status",
                   "grpcroutes/status", "tlsroutes/status", "backendtlspolicies/status"],
     "verbs": ["update"]},
)


def objects(port: int) -> list[dict[str, Any]]:
    """RBAC for Traefik's user, the namespace, the GatewayClass and the Gateway."""
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": USER}, "rules": [dict(rule) for rule in RULES]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": USER},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": USER},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
         "metadata": {"name": NAME},
         "spec": {"controllerName": CONTROLLER,
                  "description": "Traefik, run by infleet dev as a cluster component"}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": NAME, "namespace": NAMESPACE},
         "spec": {"gatewayClassName": NAME,
                  "listeners": [{"name": LISTENER, "protocol": "HTTP", "port": port,
                                 "allowedRoutes": {"namespaces": {"from": "All"}}}]}},
    ]


def static_config(port: int, ping_port: int) -> dict[str, Any]:
    """Traefik's static configuration: the listener's entry point, /ping, the provider."""
    return {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": {
            "web": {"address": f"127.0.0.1:{port}"},
            "ping": {"address": f"127.0.0.1:{ping_port}"},
        },
        "ping": {"entryPoint": "ping"},
        # Apply route and endpoint changes within a fraction of a second (default 2 s).
        "providers": {
            "providersThrottleDuration": "200ms",
            "kubernetesGateway": {"statusAddress": {"ip": "127.0.0.1"}},
        },
        "log": {"level": "INFO", "noColor": True},
    }


def programmed(gateway: dict[str, Any]) -> bool:
    """Whether Traefik has accepted the Gateway's current spec and serves its listener."""
    generation = gateway.get("metadata", {}).get("generation")
    return any(
        c.get("type") == "Programmed" and c.get("status") == "True"
        and c.get("observedGeneration") == generation
        for c in gateway.get("status", {}).get("conditions") or []
    )
