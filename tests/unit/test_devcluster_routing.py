"""The dev cluster's gateway pieces that need no cluster: Traefik's objects and configuration,
the EndpointSlices the executor writes for its pods, the apply paths and the tool pins."""

from __future__ import annotations

import pytest

from infleet.devcluster import apply, endpoints, gateway, tools
from infleet.devcluster.errors import ClusterStartError


def pod(name: str, labels: dict, ip: str = "127.1.2.3", ready: bool = True, **extra) -> dict:
    meta = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "labels": labels}
    meta.update(extra.pop("meta", {}))
    return {
        "metadata": meta,
        "spec": {"nodeName": "x86-local-0", "containers": [
            {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": extra.pop("phase", "Running"), "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def service(selector: dict | None, target: int | str = "http", **spec) -> dict:
    return {"metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid"},
            "spec": {"selector": selector, "ports": [{"name": "web", "port": 80,
                                                       "targetPort": target}], **spec}}


def test_slices_list_the_selected_pods_by_address_with_their_readiness() -> None:
    pods = [pod("a", {"app": "web"}, "127.1.0.1"), pod("b", {"app": "web"}, "127.1.0.2", False),
            pod("other", {"app": "db"}, "127.1.0.3")]
    (slice_,) = endpoints.desired_slices(service({"app": "web"}), pods)
    assert slice_["addressType"] == "FQDN"  # the API server refuses loopback IPv4 endpoints
    assert slice_["metadata"]["labels"] == {
        "kubernetes.io/service-name": "web",
        "endpointslice.kubernetes.io/managed-by": "local-executor.dev.infleet.dev"}
    assert slice_["metadata"]["ownerReferences"][0]["uid"] == "svc-uid"
    assert slice_["ports"] == [{"name": "web", "port": 8080, "protocol": "TCP"}]  # named port
    got = {e["addresses"][0]: e["conditions"]["ready"] for e in slice_["endpoints"]}
    assert got == {"127.1.0.1": True, "127.1.0.2": False}
    assert slice_["endpoints"][0]["targetRef"] == {
        "kind": "Pod", "name": "a", "namespace": "ns", "uid": "uid-a"}


def test_deleting_finished_and_foreign_pods_are_not_ready_or_absent() -> None:
    deleting = pod("d", {"app": "web"}, "127.1.0.4", meta={"deletionTimestamp": "now"})
    done = pod("e", {"app": "web"}, "127.1.0.5", phase="Succeeded")
    elsewhere = pod("f", {"app": "web"}, "127.1.0.6", meta={"namespace": "other"})
    (slice_,) = endpoints.desired_slices(service({"app": "web"}), [deleting, done, elsewhere])
    (endpoint,) = slice_["endpoints"]
    assert endpoint["conditions"] == {"ready": False, "serving": True, "terminating": True}


def test_no_selector_or_no_pods_means_no_slice_and_numeric_ports_pass_through() -> None:
    assert endpoints.desired_slices(service(None), [pod("a", {"app": "web"})]) == []
    assert endpoints.desired_slices(service({"app": "web"}), []) == []
    (slice_,) = endpoints.desired_slices(service({"app": "web"}, 9000), [pod("a", {"app": "web"})])
    assert slice_["ports"][0]["port"] == 9000
    unready = pod("a", {"app": "web"}, ready=False)
    (published,) = endpoints.desired_slices(
        service({"app": "web"}, publishNotReadyAddresses=True), [unready])
    assert published["endpoints"][0]["conditions"]["ready"] is True


def test_pods_with_different_port_mappings_get_slices_of_their_own() -> None:
    a = pod("a", {"app": "web"}, "127.1.0.1")
    b = pod("b", {"app": "web"}, "127.1.0.2")
    b["spec"]["containers"][0]["ports"][0]["containerPort"] = 9090
    slices = endpoints.desired_slices(service({"app": "web"}), [a, b])
    assert sorted(s["metadata"]["name"] for s in slices) == [
        "web-infleet-local", "web-infleet-local-1"]
    assert sorted(s["ports"][0]["port"] for s in slices) == [8080, 9090]


def test_gateway_listener_is_traefiks_entry_point_and_admits_every_namespace() -> None:
    objs = {o["kind"]: o for o in gateway.objects(31234)}
    (listener,) = objs["Gateway"]["spec"]["listeners"]
    assert listener["port"] == 31234 and listener["protocol"] == "HTTP"
    assert listener["allowedRoutes"] == {"namespaces": {"from": "All"}}
    assert objs["Gateway"]["metadata"] == {"name": "infleet", "namespace": "infleet-system"}
    assert objs["GatewayClass"]["spec"]["controllerName"] == "traefik.io/gateway-controller"
    config = gateway.static_config(31234, 31235)
    # Traefik's provider matches a listener to the entry point with the same port.
    assert config["entryPoints"]["web"]["address"] == "127.0.0.1:31234"
    assert config["ping"]["entryPoint"] == "ping"


def test_gateway_user_may_read_and_report_status_but_write_nothing_else() -> None:
    objs = {o["kind"]: o for o in gateway.objects(1)}
    rules = objs["ClusterRole"]["rules"]
    verbs = {v for r in rules for v in r["verbs"]}
    assert verbs == {"get", "list", "watch", "update"}
    for rule in rules:
        assert "*" not in rule["resources"] and "pods" not in rule["resources"]
        if "update" in rule["verbs"]:
            assert all(res.endswith("/status") for res in rule["resources"])
    assert objs["ClusterRoleBinding"]["subjects"][0]["name"] == gateway.USER


def test_programmed_needs_the_current_generation() -> None:
    gw = {"metadata": {"generation": 2}, "status": {"conditions": [
        {"type": "Programmed", "status": "True", "observedGeneration": 1}]}}
    assert not gateway.programmed(gw)
    gw["status"]["conditions"][0]["observedGeneration"] = 2
    assert gateway.programmed(gw)
    assert not gateway.programmed({"metadata": {"generation": 1}})


def test_apply_paths_and_unknown_kinds() -> None:
    objs = {o["kind"]: o for o in gateway.objects(1)}
    assert apply.resource_path(objs["Gateway"]) == (
        "/apis/gateway.networking.k8s.io/v1/namespaces/infleet-system/gateways/infleet")
    assert apply.resource_path(objs["Namespace"]) == "/api/v1/namespaces/infleet-system"
    with pytest.raises(ClusterStartError, match=r"does not apply Deployment \(apps/v1\)"):
        apply.resource_path({"apiVersion": "apps/v1", "kind": "Deployment",
                             "metadata": {"name": "x"}})


def test_gateway_has_a_cache_folder_of_its_own_keyed_by_its_pins(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("INFLEET_CACHE_DIR", str(tmp_path))
    # The cluster binaries' key never reads the gateway's pins, so bumping Traefik never
    # rebuilds them.
    assert tools.GATEWAY not in {m.name for m in tools.MODULES}
    assert tools.gateway_dir().parent == tools.bin_dir().parent
    assert tools.gateway_dir().name.startswith("gateway-")
    with pytest.raises(Exception, match="infleet dev tools"):
        tools.locate_gateway()
    versions = tools.gateway_versions()
    sums = (tools.GOTOOLS / tools.GATEWAY / "go.sum").read_text()
    for module, version in ((tools.TRAEFIK_MODULE, versions["traefik"]),
                            (tools.GATEWAY_API_MODULE, versions["gateway-api"])):
        assert f"{module} {version} h1:" in sums
        assert f"{module} {version}/go.mod h1:" in sums
