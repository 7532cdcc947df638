"""HTTP listeners over ADS (state-of-the-world and delta): a test ADS server drives an in-process zlbfast (real
Engine, real HTTP/1.1 upstreams that label their answers) through initial CDS/EDS/LDS/RDS, listener warming until
its RouteConfiguration arrives, routing by Host and path, endpoint and route changes under keep-alive load, a route to a
cluster CDS does not have yet, a NACKed RouteConfiguration with the old routes still serving, the control plane
removing the RouteConfiguration, and the listener's removal ending the RDS subscription; a restart from the cache
while the control plane is down; an inline route_config's cluster validation."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from tests.httputil import Client, RecordingUpstream
from tests.netutil import free_port, wait_for
from tests.xds.adsserver import AdsServer
from tests.xds.agentrun import AgentThread
from tests.xds.envoy_res import ads_bootstrap, assignment, eds_cluster, http_listener, route_config, to_cluster, vhost
from tests.xds.traffic import KeepAlive, routed
from zlbfast.xds import resources as r
from zlbfast.xds.state import CACHE_FILE


@pytest.fixture
def upstreams() -> Iterator[dict[str, RecordingUpstream]]:
    ups = {label: RecordingUpstream(label) for label in ("api0", "api1", "api2", "web0", "new0")}
    yield ups
    for up in ups.values():
        up.stop()


def endpoints(ups: dict[str, RecordingUpstream], cluster: str, *labels: str) -> object:
    return assignment(cluster, [ups[label].addr for label in labels])


def first_routes() -> object:
    return route_config(
        "routes",
        vhost("api", ["api.example"],
              to_cluster("api", "/v1/"),
              {"match": {"path": "/health"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}),
        vhost("web", ["*"], to_cluster("web")))


def route_requests(ads_server: AdsServer) -> list[object]:
    """The RDS subscription requests the client sent (not its ACKs and NACKs)."""
    return [x.request for x in ads_server.recorded(type_url=r.ROUTE) if not x.nack]


def test_listener_serves_404_after_its_rds_initial_fetch_timeout(ads_server, agent_factory, upstreams):
    """Like Envoy: once its config source's initial_fetch_timeout passes without the RouteConfiguration, the listener
    starts, answering 404 to every request, and takes the routes when they come; a timeout of 0 waits for ever."""
    port, patient_port = free_port(), free_port()
    ads_server.set(r.CLUSTER, {"web": eds_cluster("web")})
    ads_server.set(r.ENDPOINT, {"web": endpoints(upstreams, "web", "web0")})
    ads_server.set(r.LISTENER, {"l": http_listener("l", port, rds="routes", rds_fetch_timeout="0.5s"),
                                "patient": http_listener("patient", patient_port, rds="later", rds_fetch_timeout="0s")})
    agent = agent_factory(ads_server)

    wait_for(lambda: agent.has_listener("l"), what="the listener after its routes' initial fetch timeout")
    assert routed(port, "any.example", "/x") == (404, "")
    assert upstreams["web0"].requests == []
    assert agent.state()["waiting_for_routes"] == ["patient"]
    assert not agent.has_listener("patient")

    ads_server.set(r.ROUTE, {"routes": route_config("routes", vhost("web", ["*"], to_cluster("web")))})
    wait_for(lambda: routed(port, "any.example", "/x") == (200, "web0"), what="the routes once they arrived")
    assert agent.state()["waiting_for_routes"] == ["patient"]


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_http_listener_over_rds(ads_server, agent_factory, upstreams, delta):
    port = free_port()
    ads_server.set(r.CLUSTER, {"api": eds_cluster("api"), "web": eds_cluster("web")})
    ads_server.set(r.ENDPOINT, {"api": endpoints(upstreams, "api", "api0", "api1"),
                                "web": endpoints(upstreams, "web", "web0")})
    ads_server.set(r.LISTENER, {"l": http_listener("l", port, rds="routes")})
    agent = agent_factory(ads_server, delta=delta)

    # LDS before RDS: the listener warms (not bound) and its RouteConfiguration is subscribed to.
    wait_for(lambda: agent.state()["waiting_for_routes"] == ["l"], what="the listener waiting for its routes")
    wait_for(lambda: any("routes" in (q.resource_names_subscribe if delta else q.resource_names)
                         for q in route_requests(ads_server)), what="the RDS subscription")
    assert not agent.has_listener("l")

    ads_server.set(r.ROUTE, {"routes": first_routes()})
    wait_for(lambda: agent.has_listener("l"), what="the listener once its routes arrived")
    assert agent.state()["waiting_for_routes"] == []

    # Routed by Host and path; the port of the Host takes part, as in Envoy (no ignore_port_in_host_matching).
    assert {routed(port, "api.example", f"/v1/{i}")[1] for i in range(8)} == {"api0", "api1"}
    assert routed(port, "API.example", "/v1/x")[1] in ("api0", "api1")
    assert routed(port, "www.example", "/v1/x") == (200, "web0")
    assert routed(port, "api.example:8080", "/v1/x") == (200, "web0")
    assert routed(port, "api.example", "/v2/x")[0] == 404  # the api virtual host has no route for it
    with Client(port) as cl:
        resp = cl.request("GET", "/health", host="api.example")
    assert (resp.status, resp.body) == (200, b"ok")
    assert upstreams["api0"].requests[0].target.startswith("/v1/")

    # Endpoint changes under keep-alive load: no request fails while api0 goes and api2 comes.
    load = KeepAlive(port, "api.example", "/v1/load")
    try:
        wait_for(lambda: len(load.responses) > 20 or bool(load.error), what="keep-alive traffic before the change")
        ads_server.set(r.ENDPOINT, {"api": endpoints(upstreams, "api", "api1", "api2"),
                                    "web": endpoints(upstreams, "web", "web0")})
        ads_server.wait_ack(r.ENDPOINT)
        mark = len(load.responses)
        wait_for(lambda: len(load.responses) > mark + 20 or bool(load.error), what="keep-alive traffic after it")
    finally:
        load.stop()
    assert load.error == "" and {status for status, _ in load.responses} == {200}
    assert {label for _, label in load.responses[mark + 1:]} == {"api1", "api2"}

    # A route change under keep-alive load: the connection keeps working, and once the update is ACKed the
    # requests on it go where the new routes say. /v2/ names a cluster CDS does not have yet: 503, as in Envoy.
    load = KeepAlive(port, "api.example", "/v1/load")
    try:
        wait_for(lambda: len(load.responses) > 20 or bool(load.error), what="keep-alive traffic before the change")
        ads_server.set(r.ROUTE, {"routes": route_config(
            "routes",
            vhost("api", ["api.example"], to_cluster("web", "/v1/"), to_cluster("new", "/v2/")),
            vhost("web", ["*"], to_cluster("web")))})
        ads_server.wait_ack(r.ROUTE)
        mark = len(load.responses)
        wait_for(lambda: len(load.responses) > mark + 20 or bool(load.error), what="keep-alive traffic after it")
    finally:
        load.stop()
    assert load.error == ""
    assert {status for status, _ in load.responses} == {200}
    # The connection switched routes once, between two of its requests, no later than the ACK (one request may
    # have been in flight across it).
    labels = [label for _, label in load.responses]
    switch = labels.index("web0")
    assert 20 < switch <= mark + 1
    assert set(labels[:switch]) == {"api1", "api2"} and set(labels[switch:]) == {"web0"}
    assert routed(port, "api.example", "/v2/x") == (503, "")

    # The cluster arrives: the same route now reaches it.
    ads_server.set(r.ENDPOINT, {"api": endpoints(upstreams, "api", "api1", "api2"),
                                "web": endpoints(upstreams, "web", "web0"), "new": endpoints(upstreams, "new", "new0")})
    ads_server.set(r.CLUSTER, {"api": eds_cluster("api"), "web": eds_cluster("web"), "new": eds_cluster("new")})
    wait_for(lambda: routed(port, "api.example", "/v2/x") == (200, "new0"), what="the new cluster behind /v2/")

    # A bad RouteConfiguration is NACKed naming resource and field; the previous routes keep serving.
    ads_server.set(r.ROUTE, {"routes": route_config("routes", vhost("api", ["api.example"], {
        "match": {"safe_regex": {"regex": "/items/\\d+"}}, "route": {"cluster": "api"}}))})
    wait_for(lambda: ads_server.nacks(r.ROUTE), what="the NACK of the bad RouteConfiguration")
    nack = ads_server.nacks(r.ROUTE)[0]
    assert nack.startswith("RouteConfiguration 'routes': virtual_hosts[0].routes[0].match.safe_regex.regex: "
                           "'\\d' (write [[:digit:]]) is not POSIX extended regex syntax"), nack
    st = agent.state()
    assert st["nacks"] == 1 and st["connected"]
    assert routed(port, "api.example", "/v1/x") == (200, "web0")
    assert routed(port, "api.example", "/v2/x") == (200, "new0")
    if not delta:  # the NACK carries the last accepted version
        assert [x for x in ads_server.recorded(type_url=r.ROUTE) if x.nack][0].request.version_info == "2"

    # The control plane drops the RouteConfiguration while the listener still names it: like Envoy, which ignores
    # such removals, the listener keeps its routes (delta sends a removal; state of the world just omits it).
    ads_server.set(r.ROUTE, {})
    ads_server.wait_ack(r.ROUTE)
    assert routed(port, "api.example", "/v1/x") == (200, "web0")

    # The listener goes: so does the RDS subscription and the table.
    ads_server.set(r.LISTENER, {})
    wait_for(lambda: not agent.has_listener("l"), what="the listener's removal")
    if delta:
        wait_for(lambda: list(route_requests(ads_server)[-1].resource_names_unsubscribe) == ["routes"],
                 what="the RDS unsubscription")
    else:
        wait_for(lambda: list(route_requests(ads_server)[-1].resource_names) == [], what="the empty RDS subscription")
    assert agent.call(lambda: dict(agent.agent.pipeline.routes)) == {}


def test_inline_route_config_validates_clusters(ads_server, agent_factory, upstreams):
    """An inline route_config needs no RDS; validate_clusters is on for it by default (as in Envoy), so a route to
    a cluster CDS does not have is NACKed naming the route, and off it is allowed (503 until the cluster exists)."""
    port = free_port()
    ads_server.set(r.CLUSTER, {"web": eds_cluster("web")})
    ads_server.set(r.ENDPOINT, {"web": endpoints(upstreams, "web", "web0")})
    inline = {"virtual_hosts": [vhost("all", ["*"], to_cluster("api", "/api/"), to_cluster("web"))]}
    ads_server.set(r.LISTENER, {"l": http_listener("l", port, route_config=inline)})
    agent = agent_factory(ads_server)
    wait_for(lambda: ads_server.nacks(r.LISTENER), what="the NACK of the route to an unknown cluster")
    assert ads_server.nacks(r.LISTENER)[0] == (
        "Listener 'l': filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.cluster: "
        "unknown cluster 'api' (validate_clusters is on: true by default for a route_config inline in a listener)")
    assert not agent.has_listener("l")

    ads_server.set(r.LISTENER, {"l": http_listener("l", port, route_config={**inline, "validate_clusters": False})})
    wait_for(lambda: agent.has_listener("l"), what="the listener with validate_clusters off")
    assert routed(port, "x.example", "/api/x") == (503, "")
    assert routed(port, "x.example", "/other") == (200, "web0")
    assert ads_server.recorded(type_url=r.ROUTE) == []  # nothing to subscribe to


def test_http_listener_restarts_from_the_cache(tmp_path, upstreams):
    """The cached state replays listeners before the RouteConfigurations they name: a proxy restarted while the
    control plane is down serves its HTTP routes at once."""
    port = free_port()
    server = AdsServer().start()
    server.set(r.CLUSTER, {"api": eds_cluster("api"), "web": eds_cluster("web")})
    server.set(r.ENDPOINT, {"api": endpoints(upstreams, "api", "api0"), "web": endpoints(upstreams, "web", "web0")})
    server.set(r.LISTENER, {"l": http_listener("l", port, rds="routes")})
    server.set(r.ROUTE, {"routes": first_routes()})
    boot = ads_bootstrap(server.port)
    cache = str(tmp_path / "cache")
    agent = AgentThread(boot, cache).start()
    try:
        wait_for(lambda: agent.has_listener("l"), what="the listener over RDS")

        def cached_routes() -> bool:
            try:
                with open(os.path.join(cache, CACHE_FILE)) as f:
                    return "routes" in json.load(f)["types"][r.ROUTE]["resources"]
            except (OSError, ValueError, KeyError):
                return False

        wait_for(cached_routes, what="the RouteConfiguration in the cache")
    finally:
        agent.stop()
        server.stop()
    agent = AgentThread(boot, cache).start()
    try:
        assert agent.state()["serving_from_cache"]
        assert routed(port, "api.example", "/v1/x") == (200, "api0")
        assert routed(port, "other.example", "/") == (200, "web0")
    finally:
        agent.stop()
