"""A test ADS server drives an in-process zlbfast (real Engine, real TCP traffic) through initial
CDS/EDS/LDS, endpoint changes under load, a NACKed resource, cluster removal and delta subscriptions (HTTP
listeners and RDS: test_ads_http.py)."""

from __future__ import annotations

import pytest

from tests.netutil import free_port, read_label, wait_for
from tests.xds.adsserver import AdsServer
from tests.xds.envoy_res import assignment, eds_cluster, tcp_listener
from tests.xds.traffic import Load, label_or_empty
from zlbfast.xds import resources as r


def labels_seen(port: int, n: int) -> set[str]:
    return {read_label(port) for _ in range(n)}


def serve_basic(server: AdsServer, backends: list, port: int) -> None:
    server.set(r.CLUSTER, {"a": eds_cluster("a")})
    server.set(r.ENDPOINT, {"a": assignment("a", [(b.host, b.port) for b in backends])})
    server.set(r.LISTENER, {"l": tcp_listener("l", port, "a")})


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_ads_lifecycle(ads_server, agent_factory, backends, delta):
    b = backends(4)
    port = free_port()
    serve_basic(ads_server, b[:2], port)
    agent = agent_factory(ads_server, delta=delta)

    # Initial CDS -> EDS -> LDS: the listener appears once its cluster has endpoints.
    wait_for(lambda: agent.has_listener("l"), what="listener from LDS")
    assert labels_seen(port, 20) == {"b0", "b1"}
    st = agent.state()
    assert st["connected"] and not st["serving_from_cache"] and st["nacks"] == 0
    assert st["last_version"]["Cluster"] == "1"

    # Endpoint changes under load: no connection fails while b0 goes and b2 comes.
    load = Load(port)
    try:
        wait_for(lambda: load.ok > 50, what="traffic before the change")
        ads_server.set(r.ENDPOINT, {"a": assignment("a", [(b[1].host, b[1].port), (b[2].host, b[2].port)])})
        ads_server.wait_ack(r.ENDPOINT)
        mark = len(load.labels)
        wait_for(lambda: len(load.labels) > mark + 50, what="traffic after the change")
    finally:
        load.stop()
    assert load.failed == []
    # The one client thread may have had one connection in flight across the update.
    assert set(load.labels[mark + 1:]) == {"b1", "b2"}

    # A bad resource is NACKed with a message naming resource and field; the old config keeps serving.
    bad = eds_cluster("a", policy="CLUSTER_PROVIDED")
    ads_server.set(r.CLUSTER, {"a": bad})
    wait_for(lambda: ads_server.nacks(r.CLUSTER), what="NACK of the bad cluster")
    assert "Cluster 'a': lb_policy: CLUSTER_PROVIDED is not supported" in ads_server.nacks(r.CLUSTER)[0]
    st = agent.state()
    assert st["nacks"] == 1 and st["last_version"]["Cluster"] == "1"
    assert labels_seen(port, 10) == {"b1", "b2"}
    if not delta:  # the NACK carries the last accepted version
        nack = [x for x in ads_server.recorded(type_url=r.CLUSTER) if x.nack][0]
        assert nack.request.version_info == "1"

    # Fix the cluster, add a second cluster and listener (delta: a new EDS subscription), then remove them.
    port_c = free_port()
    ads_server.set(r.ENDPOINT, {"a": assignment("a", [(b[1].host, b[1].port), (b[2].host, b[2].port)]),
                                "c": assignment("c", [(b[3].host, b[3].port)])})
    ads_server.set(r.CLUSTER, {"a": eds_cluster("a"), "c": eds_cluster("c", policy="LEAST_REQUEST")})
    ads_server.set(r.LISTENER, {"l": tcp_listener("l", port, "a"), "lc": tcp_listener("lc", port_c, "c")})
    wait_for(lambda: agent.has_listener("lc"), what="second listener")
    assert labels_seen(port_c, 5) == {"b3"}
    ads_server.set(r.LISTENER, {"l": tcp_listener("l", port, "a")})
    ads_server.set(r.CLUSTER, {"a": eds_cluster("a")})
    wait_for(lambda: not agent.has_listener("lc"), what="listener removal")
    ads_server.wait_ack(r.CLUSTER)
    engine = agent.engine
    wait_for(lambda: set(agent.call(engine.endpoints)) == {"a"}, what="cluster removal in the engine")
    assert labels_seen(port, 10) == {"b1", "b2"}

    eds_requests = [x.request for x in ads_server.recorded(type_url=r.ENDPOINT) if not x.request.response_nonce
                    or not delta]
    if delta:
        subscribed = [n for q in eds_requests for n in q.resource_names_subscribe]
        unsubscribed = [n for q in eds_requests for n in q.resource_names_unsubscribe]
        assert subscribed == ["a", "c"] and unsubscribed == ["c"]
    else:
        assert [sorted(q.resource_names) for q in eds_requests if not q.response_nonce] == [["a"]]
        assert ["a", "c"] in [sorted(q.resource_names) for q in eds_requests]
        assert sorted(eds_requests[-1].resource_names) == ["a"]


def test_a_value_the_model_refuses_is_nacked(ads_server, agent_factory, backends):
    """The model's validation judges what translation passes through (here a zone with a space): a NACK naming it,
    the stream stays up and the old endpoints keep serving."""
    b = backends(1)
    port = free_port()
    serve_basic(ads_server, b, port)
    agent = agent_factory(ads_server)
    wait_for(lambda: agent.has_listener("l"), what="listener from LDS")
    ads_server.set(r.ENDPOINT, {"a": assignment("a", [(b[0].host, b[0].port)], zone="a b")})
    wait_for(lambda: ads_server.nacks(r.ENDPOINT), what="NACK of the zone")
    assert "endpoints[0].zone: must contain only printable characters and no spaces" in ads_server.nacks(r.ENDPOINT)[0]
    st = agent.state()
    assert st["connected"] and st["nacks"] == 1 and st["last_version"]["ClusterLoadAssignment"] == "1"
    assert labels_seen(port, 5) == {"b0"}


def test_initial_fetch_timeout_names_only_clusters_still_waiting(ads_server, agent_factory, backends, caplog):
    (b0,) = backends(1)
    ads_server.set(r.CLUSTER, {"w": eds_cluster("w"), "late": eds_cluster("late")})
    ads_server.set(r.ENDPOINT, {"w": assignment("w", [(b0.host, b0.port)])})
    agent = agent_factory(ads_server, fetch_timeout="1s")
    wait_for(lambda: "w" in agent.call(agent.agent.engine.endpoints), what="cluster w with its endpoints")
    wait_for(lambda: any("initial fetch timeout" in m for m in caplog.messages), what="the timeout's warning")
    assert [m for m in caplog.messages if "initial fetch timeout" in m] == [
        "initial fetch timeout: clusters late start without endpoints"]
    wait_for(lambda: "late" in agent.call(agent.agent.engine.endpoints), what="cluster late, empty")


def test_cluster_warming_and_initial_fetch_timeout(ads_server, agent_factory, backends):
    """An EDS cluster is not installed before its endpoints arrive; after initial_fetch_timeout it is
    installed empty (connections to it fail fast) and its listener comes up."""
    (b0,) = backends(1)
    port = free_port()
    ads_server.set(r.CLUSTER, {"w": eds_cluster("w")})
    ads_server.set(r.LISTENER, {"lw": tcp_listener("lw", port, "w")})
    agent = agent_factory(ads_server, fetch_timeout="1s")
    wait_for(lambda: agent.state()["last_version"].get("Cluster") == "1", what="CDS")
    assert agent.state()["warming_clusters"] == ["w"]
    assert not agent.has_listener("lw")
    wait_for(lambda: agent.has_listener("lw"), what="listener after the initial fetch timeout")
    assert label_or_empty(port) == ""  # no endpoints: closed or reset without a backend
    ads_server.set(r.ENDPOINT, {"w": assignment("w", [(b0.host, b0.port)])})
    wait_for(lambda: label_or_empty(port) == "b0", what="endpoints after warming")
