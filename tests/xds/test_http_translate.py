"""Translation of HTTP connection manager listeners and RouteConfigurations into the model: what each supported
field becomes, and that every unsupported one is refused naming the resource and the full field path (the NACK
message). End-to-end behaviour over ADS is in test_ads_http.py and, against a real Envoy, test_envoy_interop.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from tests.xds.envoy_res import common_tls, http_manager, tls_socket
from zlbfast import model
from zlbfast.config import MAX_DURATION_MS
from zlbfast.xds.listeners import translate_listener
from zlbfast.xds.resources import ResourceError
from zlbfast.xds.routes import translate_route

TC = "filter_chains[0].filters[0].typed_config"


def listener(**hcm: Any) -> listener_pb2.Listener:
    hcm.setdefault("rds", "routes")
    return json_format.ParseDict({
        "name": "web", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": http_manager(**hcm)}]}]}, listener_pb2.Listener())


def without(key: str) -> Any:
    """An HCM edit that removes a key http_manager sets."""
    def edit(hcm: dict[str, Any]) -> None:
        del hcm[key]
    return edit


def hcm_edit(**fields: Any) -> Any:
    def edit(hcm: dict[str, Any]) -> None:
        hcm.update(fields)
    return edit


def other_filter(hcm: dict[str, Any]) -> None:
    hcm["httpFilters"] = [{"name": "envoy.filters.http.cors"}]


def scoped_routes(hcm: dict[str, Any]) -> None:
    del hcm["rds"]
    hcm["scopedRoutes"] = {"name": "s"}


def edited_listener(edit: Any) -> listener_pb2.Listener:
    data = json_format.MessageToDict(listener())
    edit(data["filterChains"][0]["filters"][0]["typedConfig"])
    return json_format.ParseDict(data, listener_pb2.Listener())


# (id, edit of the HCM's JSON, field path, phrase)
HCM_REFUSED = [
    ("HTTP/2 codec", hcm_edit(codecType="HTTP2"), f"{TC}.codec_type", "HTTP2 is not supported"),
    ("a second HTTP filter", lambda h: h["httpFilters"].insert(0, {"name": "envoy.filters.http.cors"}),
     f"{TC}.http_filters", "exactly one HTTP filter"),
    ("another HTTP filter", other_filter, f"{TC}.http_filters[0].name", "unsupported HTTP filter"),
    ("router options", lambda h: h["httpFilters"][0]["typedConfig"].update(suppressEnvoyHeaders=True),
     f"{TC}.http_filters[0].typed_config.suppress_envoy_headers", "not supported"),
    ("trusted hops", hcm_edit(xffNumTrustedHops=1), f"{TC}.xff_num_trusted_hops", "not supported"),
    ("request timeout", hcm_edit(requestTimeout="5s"), f"{TC}.request_timeout", "only 0 (disabled)"),
    ("stream idle timeout", hcm_edit(streamIdleTimeout="300s"), f"{TC}.stream_idle_timeout", "only 0"),
    ("downstream request limit", hcm_edit(commonHttpProtocolOptions={"maxRequestsPerConnection": 10}),
     f"{TC}.common_http_protocol_options.max_requests_per_connection", "not supported"),
    ("too many headers", hcm_edit(commonHttpProtocolOptions={"maxHeadersCount": 200}),
     f"{TC}.common_http_protocol_options.max_headers_count", "between 1 and 128"),
    ("header limit", hcm_edit(maxRequestHeadersKb=2048), f"{TC}.max_request_headers_kb", "between 1 and 1024"),
    ("always forward", hcm_edit(forwardClientCertDetails="ALWAYS_FORWARD_ONLY"),
     f"{TC}.forward_client_cert_details", "ALWAYS_FORWARD_ONLY is not supported"),
    ("append without URI", hcm_edit(forwardClientCertDetails="APPEND_FORWARD"),
     f"{TC}.set_current_client_cert_details.uri", "must be true"),
    ("scoped routes", scoped_routes, f"{TC}.scoped_routes", "not supported"),
    ("RDS from a file", lambda h: h["rds"].update(configSource={"pathConfigSource": {"path": "/x"}}),
     f"{TC}.rds.config_source.path_config_source", "not supported"),
    ("no route config name", lambda h: h["rds"].pop("routeConfigName"), f"{TC}.rds.route_config_name",
     "must name a RouteConfiguration"),
    ("access log", hcm_edit(accessLog=[{"name": "x"}]), f"{TC}.access_log", "not supported"),
    ("websocket upgrades", hcm_edit(upgradeConfigs=[{"upgradeType": "websocket"}]), f"{TC}.upgrade_configs",
     "not supported"),
    ("path normalization", hcm_edit(normalizePath=True), f"{TC}.normalize_path", "as it was sent"),
    ("no request ids", hcm_edit(generateRequestId=False), f"{TC}.generate_request_id", "always adds"),
    ("unescaping slashes", hcm_edit(pathWithEscapedSlashesAction="UNESCAPE_AND_FORWARD"),
     f"{TC}.path_with_escaped_slashes_action", "KEEP_UNCHANGED"),
    ("server header", hcm_edit(serverHeaderTransformation="APPEND_IF_ABSENT"), f"{TC}.server_header_transformation",
     "PASS_THROUGH"),
]


@pytest.mark.parametrize(("edit", "path", "phrase"), [c[1:] for c in HCM_REFUSED], ids=[c[0] for c in HCM_REFUSED])
def test_unsupported_connection_manager_fields_are_refused(edit, path, phrase):
    with pytest.raises(ResourceError) as err:
        translate_listener(edited_listener(edit))
    assert (err.value.kind, err.value.name, err.value.field) == ("Listener", "web", path)
    assert phrase in err.value.problem


def test_an_http_listener_offers_http_1_1_only_over_tls():
    msg = listener()
    tls = tls_socket("DownstreamTlsContext", require_client_certificate=True,
                     common_tls_context=common_tls("cert", "ca", alpn_protocols=["h2", "http/1.1"]))
    json_format.ParseDict(tls, msg.filter_chains[0].transport_socket)
    with pytest.raises(ResourceError) as err:
        translate_listener(msg)
    assert err.value.field == "filter_chains[0].transport_socket.typed_config.common_tls_context.alpn_protocols"
    msg.filter_chains[0].transport_socket.Clear()
    json_format.ParseDict(tls_socket("DownstreamTlsContext", require_client_certificate=True,
                                     common_tls_context=common_tls("cert", "ca", alpn_protocols=["http/1.1"])),
                          msg.filter_chains[0].transport_socket)
    spec = translate_listener(msg)
    assert spec.listener.tls is not None and spec.listener.tls.alpn == ("http/1.1",)
    assert spec.sds is not None and (spec.sds.certificate, spec.sds.validation) == ("cert", "ca")


def test_connection_manager_options_map_to_the_http_listener():
    spec = translate_listener(listener())
    lst = spec.listener
    assert (lst.protocol, lst.cluster, spec.rds, spec.routes) == ("http", "", "routes", None)
    # Envoy's defaults where zlbfast's differ: 60 KiB of headers (the request line included), 1 h idle.
    assert (lst.http.max_head, lst.http.max_request_line, lst.idle_timeout_ms) == (61440, 61440, 3_600_000)
    assert lst.http.forward_client_cert == "sanitize"

    spec = translate_listener(listener(
        codec_type="HTTP1", max_request_headers_kb=8, request_headers_timeout="2s", stream_idle_timeout="0s",
        request_timeout="0s", common_http_protocol_options={"idle_timeout": "30s", "max_headers_count": 50},
        forward_client_cert_details="SANITIZE_SET", set_current_client_cert_details={"uri": True},
        generate_request_id=True, path_with_escaped_slashes_action="KEEP_UNCHANGED",
        server_header_transformation="PASS_THROUGH", http_protocol_options={}))
    http = spec.listener.http
    assert (http.max_head, http.max_request_line, http.max_headers, http.header_timeout_ms) == (8192, 8192, 50, 2000)
    assert (spec.listener.idle_timeout_ms, http.forward_client_cert) == (30000, "sanitize_set")
    for mode in ("FORWARD_ONLY", "APPEND_FORWARD"):
        http = translate_listener(listener(forward_client_cert_details=mode,
                                           set_current_client_cert_details={"uri": True})).listener.http
        assert http.forward_client_cert == mode.lower()
    # Cert, Chain, Subject and DNS: the keys zlbfast writes besides By, Hash and URI.
    http = translate_listener(listener(forward_client_cert_details="SANITIZE_SET", set_current_client_cert_details={
        "uri": True, "subject": True, "dns": True, "chain": True})).listener.http
    assert http.client_cert_details == ("chain", "subject", "dns")
    assert translate_listener(listener()).listener.http.client_cert_details == ()
    # x-forwarded-for is appended to only with use_remote_address, Envoy's default being false.
    assert translate_listener(listener()).listener.http.append_x_forwarded_for
    assert not translate_listener(edited_listener(without("useRemoteAddress"))).listener.http.append_x_forwarded_for


# ---- route configurations ----------------------------------------------------------------------------------------

BASE_ROUTES: dict[str, Any] = {"name": "routes", "virtual_hosts": [
    {"name": "vh", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}
VH = "virtual_hosts[0]"
R = f"{VH}.routes[0]"


def routes(*steps: tuple[str, Any], base: dict[str, Any] | None = None) -> route_pb2.RouteConfiguration:
    """BASE_ROUTES (or base) with values set at dotted paths (list indexes as numbers); None deletes."""
    data = copy.deepcopy(base or BASE_ROUTES)
    for dotted, value in steps:
        *parents, last = dotted.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if value is None:
            del node[last]
        elif isinstance(node, list):
            node[int(last):int(last) + 1] = [value]  # replaces, or appends after the last
        else:
            node[last] = value
    return json_format.ParseDict(data, route_pb2.RouteConfiguration())


BASE_ROUTES_MSG = routes()


def route(**fields: Any) -> route_pb2.RouteConfiguration:
    """BASE_ROUTES with its one route replaced by fields."""
    return routes(("virtual_hosts.0.routes.0", {"match": {"prefix": "/"}, **fields}))


def forwarding(**action: Any) -> route_pb2.RouteConfiguration:
    return route(route={"cluster": "a", **action})


def match(**fields: Any) -> route_pb2.RouteConfiguration:
    return route(match=fields, route={"cluster": "a"})


def header_option(key: str, value: str, **kw: Any) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, **kw}


# (id, RouteConfiguration, field path, phrase)
ROUTES_REFUSED = [
    ("VHDS", routes(("vhds", {"config_source": {"ads": {}}})), "vhds", "not supported"),
    ("internal only headers", routes(("internal_only_headers", ["x-a"])), "internal_only_headers", "not supported"),
    ("prefix wildcard", routes(("virtual_hosts.0.domains", ["foo.*"])), f"{VH}.domains[0]", "'*' alone"),
    ("inner wildcard", routes(("virtual_hosts.0.domains", ["*-bar.example"])), f"{VH}.domains[0]", "leading '*.'"),
    ("port ignored", routes(("virtual_hosts.0.domains", ["a.example:80"]), ("ignore_port_in_host_matching", True)),
     f"{VH}.domains[0]", "would never match"),
    ("duplicate domain", routes(("virtual_hosts.1", {**BASE_ROUTES["virtual_hosts"][0], "name": "vh2"})),
     f"{VH.replace('0', '1')}.domains[0]", "duplicate domain '*'"),
    ("TLS required", routes(("virtual_hosts.0.require_tls", "ALL")), f"{VH}.require_tls", "not supported"),
    ("CORS", routes(("virtual_hosts.0.cors", {"allow_credentials": True})), f"{VH}.cors", "not supported"),
    ("range match", match(prefix="/", headers=[{"name": "x", "range_match": {"start": 1, "end": 5}}]),
     f"{R}.match.headers[0].range_match", "not supported"),
    ("missing header as empty", match(prefix="/", headers=[{"name": "x", "treat_missing_header_as_empty": True,
                                                            "string_match": {"exact": ""}}]),
     f"{R}.match.headers[0].treat_missing_header_as_empty", "not supported"),
    ("pseudo-header", match(prefix="/", headers=[{"name": ":method", "string_match": {"exact": "GET"}}]),
     f"{R}.match.headers[0].name", "pseudo-headers"),
    ("bare inverted header", match(prefix="/", headers=[{"name": "x", "invert_match": True}]),
     f"{R}.match.headers[0].invert_match", "matches no request"),
    ("RE2 inline flag", match(safe_regex={"regex": "(?i)/a"}), f"{R}.match.safe_regex.regex", "'(?'"),
    ("RE2 class", match(prefix="/", headers=[{"name": "x", "safe_regex_match": {"regex": "\\w+"}}]),
     f"{R}.match.headers[0].safe_regex_match.regex", "'\\w'"),
    ("gRPC match", match(prefix="/", grpc={}), f"{R}.match.grpc", "not supported"),
    ("runtime fraction", match(prefix="/", runtime_fraction={"default_value": {"numerator": 50}}),
     f"{R}.match.runtime_fraction", "not supported"),
    ("cluster header", route(route={"cluster_header": "x-cluster"}), f"{R}.route.cluster_header", "not supported"),
    ("not found code", forwarding(cluster_not_found_response_code="NOT_FOUND"),
     f"{R}.route.cluster_not_found_response_code", "not supported"),
    ("regex rewrite", forwarding(regex_rewrite={"pattern": {"regex": "a"}, "substitution": "b"}),
     f"{R}.route.regex_rewrite", "not supported"),
    ("rewrite of an exact path", route(match={"path": "/a"}, route={"cluster": "a", "prefix_rewrite": "/b"}),
     f"{R}.route.prefix_rewrite", "prefix routes only"),
    ("auto host rewrite", forwarding(auto_host_rewrite=True), f"{R}.route.auto_host_rewrite", "not supported"),
    ("route idle timeout", forwarding(idle_timeout="5s"), f"{R}.route.idle_timeout", "not supported"),
    ("mirroring", forwarding(request_mirror_policies=[{"cluster": "b"}]), f"{R}.route.request_mirror_policies",
     "not supported"),
    ("retry on 4xx", forwarding(retry_policy={"retry_on": "5xx,retriable-4xx"}), f"{R}.route.retry_policy.retry_on",
     "'retriable-4xx' is not supported"),
    ("too many retries", forwarding(retry_policy={"retry_on": "5xx", "num_retries": 11}),
     f"{R}.route.retry_policy.num_retries", "at most 10"),
    ("retry host predicate", forwarding(retry_policy={"retry_on": "5xx", "retry_host_predicate": [{"name": "x"}]}),
     f"{R}.route.retry_policy.retry_host_predicate", "not supported"),
    ("two hash policies", forwarding(hash_policy=[{"header": {"header_name": "a"}}, {"header": {"header_name": "b"}}]),
     f"{R}.route.hash_policy", "at most one"),
    ("generated cookie", forwarding(hash_policy=[{"cookie": {"name": "s", "ttl": "10s"}}]),
     f"{R}.route.hash_policy[0].cookie.ttl", "not supported"),
    ("query hash", forwarding(hash_policy=[{"query_parameter": {"name": "u"}}]),
     f"{R}.route.hash_policy[0].query_parameter", "not supported"),
    ("weights off the total", route(route={"weighted_clusters": {"total_weight": 100, "clusters": [
        {"name": "a", "weight": 20}, {"name": "b", "weight": 70}]}}),
     f"{R}.route.weighted_clusters.total_weight", "must equal the sum of the weights (90)"),
    ("no weight", route(route={"weighted_clusters": {"clusters": [{"name": "a", "weight": 0}]}}),
     f"{R}.route.weighted_clusters.clusters", "more than 0"),
    ("per-cluster headers", route(route={"weighted_clusters": {"clusters": [
        {"name": "a", "weight": 1, "request_headers_to_add": [header_option("x", "1")]}]}}),
     f"{R}.route.weighted_clusters.clusters[0].request_headers_to_add", "not supported"),
    ("no action", route(), R, "needs route, redirect or direct_response"),
    ("redirect keeping the host", route(redirect={"https_redirect": True, "path_redirect": "/x", "strip_query": True}),
     f"{R}.redirect.host_redirect", "request's host"),
    ("redirect keeping the query",
     route(redirect={"https_redirect": True, "host_redirect": "h", "path_redirect": "/x"}),
     f"{R}.redirect.strip_query", "must be true"),
    ("redirect keeping the scheme", route(redirect={"host_redirect": "h", "path_redirect": "/x", "strip_query": True}),
     f"{R}.redirect", "scheme_redirect or https_redirect"),
    ("redirect port", route(redirect={"https_redirect": True, "host_redirect": "h", "path_redirect": "/x",
                                      "strip_query": True, "port_redirect": 8443}),
     f"{R}.redirect.port_redirect", "not supported"),
    ("big direct body", route(direct_response={"status": 200, "body": {"inline_string": "x" * 4097}}),
     f"{R}.direct_response.body", "the limit is 4096"),
    ("informational direct status", route(direct_response={"status": 101}), f"{R}.direct_response.status",
     "between 200 and 599"),
    ("headers on a direct response", routes(
        ("virtual_hosts.0.routes.0", {"match": {"prefix": "/"}, "direct_response": {"status": 204}}),
        ("response_headers_to_add", [header_option("x-a", "1")])), "response_headers_to_add",
     f"to the direct_response of {R} too"),
    ("conditional header", route(route={"cluster": "a"}, request_headers_to_add=[
        header_option("x-a", "1", append_action="ADD_IF_ABSENT")]),
     f"{R}.request_headers_to_add[0].append_action", "ADD_IF_ABSENT depends on the headers"),
    ("append and append_action", route(route={"cluster": "a"}, request_headers_to_add=[
        header_option("x-a", "1", append=False, append_action="OVERWRITE_IF_EXISTS_OR_ADD")]),
     f"{R}.request_headers_to_add[0].append", "cannot both be set"),
    ("substitution", routes(("virtual_hosts.0.request_headers_to_add",
                             [header_option("x-client", "%DOWNSTREAM_REMOTE_ADDRESS%")])),
     f"{VH}.request_headers_to_add[0].header.value", "%COMMAND%"),
    ("host header", route(route={"cluster": "a"}, request_headers_to_remove=["Host"]),
     f"{R}.request_headers_to_remove[0]", "host_rewrite_literal"),
    ("a header the proxy manages", route(route={"cluster": "a"}, request_headers_to_add=[
        header_option("content-length", "1")]), f"{R}.request_headers_to_add", "the proxy manages"),
]


@pytest.mark.parametrize(("msg", "path", "phrase"), [c[1:] for c in ROUTES_REFUSED], ids=[c[0] for c in ROUTES_REFUSED])
def test_unsupported_route_fields_are_refused(msg, path, phrase):
    with pytest.raises(ResourceError) as err:
        translate_route(msg)
    assert (err.value.kind, err.value.name, err.value.field) == ("RouteConfiguration", "routes", path)
    assert phrase in err.value.problem, err.value.problem


def test_an_inline_route_config_is_blamed_on_its_listener():
    bad = json_format.MessageToDict(route(direct_response={"status": 101}), preserving_proto_field_name=True)
    with pytest.raises(ResourceError) as err:
        translate_listener(listener(rds="", route_config=bad))
    assert (err.value.kind, err.value.name) == ("Listener", "web")
    assert err.value.field == f"{TC}.route_config.{R}.direct_response.status"


def only_route(msg: route_pb2.RouteConfiguration) -> model.Route:
    table = translate_route(msg)
    (vh,) = table.virtual_hosts
    (rt,) = vh.routes
    return rt


def test_matches_map_to_the_router_with_envoys_semantics():
    rt = only_route(match(prefix="/a", case_sensitive=False, headers=[
        {"name": "X-Env", "string_match": {"exact": "canary"}, "invert_match": True},
        {"name": "x-absent", "present_match": False},
        {"name": "x-bare"},
        {"name": "x-suffix", "string_match": {"suffix": ".json"}},
        {"name": "x-contains", "string_match": {"contains": "a.b", "ignore_case": True}},
        {"name": "x-prefix", "prefix_match": "v1"},
    ], query_parameters=[{"name": "q", "string_match": {"prefix": "x"}}, {"name": "p", "present_match": False}]))
    assert (rt.path_kind, rt.path) == ("regex", "/[aA].*")
    assert rt.headers == (
        # An inverted value match still needs the header, as in Envoy.
        model.ValueMatch("x-env", "present"), model.ValueMatch("x-env", "exact", "canary", invert=True),
        model.ValueMatch("x-absent", "present", invert=True),
        model.ValueMatch("x-bare", "present"),
        model.ValueMatch("x-suffix", "regex", ".*\\.json"),
        model.ValueMatch("x-contains", "regex", ".*[aA]\\.[bB].*"),
        model.ValueMatch("x-prefix", "prefix", "v1"),
    )
    assert rt.query == (model.ValueMatch("q", "prefix", "x"), model.ValueMatch("p", "present", invert=True))
    # A case-insensitive path without letters stays a plain match; the empty prefix matches every path.
    assert only_route(match(path="/1", case_sensitive=False)).path_kind == "exact"
    assert (only_route(match(prefix="")).path_kind, only_route(match(prefix="")).path) == ("prefix", "/")


def test_actions_map_to_the_router_with_envoys_semantics():
    rt = only_route(forwarding())
    # No retry policy: Envoy retries nothing (zlbfast's default would retry a failed connect once).
    assert rt.retry == model.RetryPolicy(num_retries=0) and rt.timeout_ms == 0
    rt = only_route(forwarding(timeout="0s", retry_policy={
        "retry_on": "gateway-error,retriable-status-codes,refused-stream", "num_retries": 3, "per_try_timeout": "1s",
        "retriable_status_codes": [409], "retry_back_off": {"base_interval": "0.1s"}}))
    assert rt.timeout_ms == MAX_DURATION_MS  # 0 disables Envoy's route timeout
    assert rt.retry == model.RetryPolicy(("gateway-error", "reset", "connect-failure", "retriable-status-codes"), 3,
                                         1000, (409,), retry_non_idempotent=True, backoff_base_ms=100,
                                         backoff_max_ms=1000)
    # Status codes without their condition do nothing in Envoy.
    assert only_route(forwarding(retry_policy={"retry_on": "5xx", "retriable_status_codes": [409]})).retry == \
        model.RetryPolicy(("5xx", "connect-failure"), 1, retry_non_idempotent=True)
    assert only_route(forwarding(retry_policy={"retry_on": ""})).retry == model.RetryPolicy(num_retries=0)
    # A virtual host's policy applies to routes without one.
    table = translate_route(routes(("virtual_hosts.0.retry_policy", {"retry_on": "reset", "num_retries": 2})))
    assert table.virtual_hosts[0].routes[0].retry.retry_on == ("reset", "connect-failure")

    rt = only_route(route(route={"weighted_clusters": {"clusters": [
        {"name": "a", "weight": 10}, {"name": "b", "weight": 0}, {"name": "a", "weight": 5},
        {"name": "c", "weight": 5}]}}))
    assert rt.clusters == (model.WeightedCluster("a", 15), model.WeightedCluster("c", 5))
    for policy, hashed in (({"header": {"header_name": "X-User"}}, ("header", "x-user")),
                           ({"cookie": {"name": "sid"}, "terminal": True}, ("cookie", "sid")),
                           ({"connection_properties": {"source_ip": True}}, ("source_ip", "")),
                           ({"connection_properties": {"source_ip": False}}, ("", ""))):
        rt = only_route(forwarding(hash_policy=[policy]))
        assert (rt.hash_on, rt.hash_name) == hashed
    # The empty prefix matched as "/" keeps the "/" its rewrite replaces.
    rt = only_route(route(match={"prefix": ""}, route={"cluster": "a", "prefix_rewrite": "/v2"}))
    assert (rt.path, rt.prefix_rewrite) == ("/", "/v2/")
    rt = only_route(route(redirect={"scheme_redirect": "http", "host_redirect": "h.example", "path_redirect": "/x?y=1",
                                    "response_code": "PERMANENT_REDIRECT"}))
    assert rt.redirect == model.Redirect(308, "http", "h.example", "/x?y=1")
    rt = only_route(route(redirect={"https_redirect": True, "host_redirect": "h", "path_redirect": "/", "strip_query":
                                    True}))
    assert rt.redirect == model.Redirect(301, "https", "h", "/")  # MOVED_PERMANENTLY is Envoy's default
    big = "x" * 5000
    rt = only_route(routes(("virtual_hosts.0.routes.0", {"match": {"prefix": "/"}, "direct_response": {
        "status": 503, "body": {"inline_bytes": "eHl6"}}}), ("max_direct_response_body_size_bytes", 8192)))
    assert (rt.direct_status, rt.direct_body) == (503, "xyz")
    assert only_route(routes(("virtual_hosts.0.routes.0", {"match": {"prefix": "/"}, "direct_response": {
        "status": 200, "body": {"inline_string": big}}}), ("max_direct_response_body_size_bytes", 8192))).direct_body \
        == big


def levels(route_ops: dict[str, Any], vh_ops: dict[str, Any], rc_ops: dict[str, Any], **rc: Any) -> model.HeaderOps:
    """The header operations of one route whose route, virtual host and route configuration levels carry the
    given request_headers_to_add/remove (and response) fields."""
    msg = routes(("virtual_hosts.0.routes.0", {"match": {"prefix": "/"}, "route": {"cluster": "a"}, **route_ops}),
                 *((f"virtual_hosts.0.{k}", v) for k, v in vh_ops.items()), *rc_ops.items(), *rc.items())
    return only_route(msg).header_ops


def add(key: str, value: str, overwrite: bool = False, **kw: Any) -> dict[str, Any]:
    return header_option(key, value, append_action="OVERWRITE_IF_EXISTS_OR_ADD" if overwrite else
                         "APPEND_IF_EXISTS_OR_ADD", **kw)


FOLDS = [
    # Envoy evaluates route, then virtual host, then route configuration: the last one evaluated wins.
    ("appends accumulate", {"request_headers_to_add": [add("x", "r")]}, {"request_headers_to_add": [add("x", "v")]},
     {"request_headers_to_add": [add("x", "c")]}, {},
     model.HeaderOps(request_add=(("x", "r"), ("x", "v"), ("x", "c")))),
    ("a later overwrite wins", {"request_headers_to_add": [add("x", "r")]},
     {"request_headers_to_add": [add("x", "v", True)]}, {}, {}, model.HeaderOps(request_set=(("x", "v"),))),
    ("appends after an overwrite", {"request_headers_to_add": [add("x", "r", True)]},
     {"request_headers_to_add": [add("x", "v")]}, {}, {},
     model.HeaderOps(request_add=(("x", "r"), ("x", "v")), request_remove=("x",))),
    ("a later removal wins", {"request_headers_to_add": [add("x", "r")]}, {"request_headers_to_remove": ["X"]}, {},
     {}, model.HeaderOps(request_remove=("x",))),
    ("within one level removals come first", {"request_headers_to_add": [add("x", "r")],
                                              "request_headers_to_remove": ["x"]}, {}, {}, {},
     model.HeaderOps(request_set=(("x", "r"),))),
    ("within one level overwrites come before appends", {"request_headers_to_add": [add("x", "a"),
                                                                                     add("x", "o", True)]}, {}, {}, {},
     model.HeaderOps(request_add=(("x", "o"), ("x", "a")), request_remove=("x",))),
    ("the most specific wins when asked", {"request_headers_to_add": [add("x", "r", True)]},
     {"request_headers_to_add": [add("x", "v", True)]}, {}, {"most_specific_header_mutations_wins": True},
     model.HeaderOps(request_set=(("x", "r"),))),
    ("the deprecated append flag", {"request_headers_to_add": [header_option("x", "r", append=False)]}, {}, {}, {},
     model.HeaderOps(request_set=(("x", "r"),))),
    ("empty values are skipped unless kept",
     {"request_headers_to_add": [add("x", ""), add("y", "", keep_empty_value=True)]}, {}, {}, {},
     model.HeaderOps(request_add=(("y", ""),))),
    ("a literal percent", {"response_headers_to_add": [add("x", "100%%")]}, {}, {"response_headers_to_remove": ["y"]},
     {}, model.HeaderOps(response_add=(("x", "100%"),), response_remove=("y",))),
]


@pytest.mark.parametrize(("route_ops", "vh_ops", "rc_ops", "rc", "want"), [c[1:] for c in FOLDS],
                         ids=[c[0] for c in FOLDS])
def test_header_mutations_of_three_levels_fold_as_envoy_evaluates_them(route_ops, vh_ops, rc_ops, rc, want):
    assert levels(route_ops, vh_ops, rc_ops, **rc) == want


def test_validate_clusters_and_host_port_matching():
    table = translate_route(routes(("validate_clusters", True)))
    with pytest.raises(ResourceError) as err:
        table.check_clusters({"b"})
    assert (err.value.kind, err.value.name, err.value.field) == ("RouteConfiguration", "routes",
                                                                 f"{R}.route.cluster")
    table.check_clusters({"a"})
    translate_route(BASE_ROUTES_MSG).check_clusters(())  # off by default for RDS
    assert translate_route(BASE_ROUTES_MSG).match_host_port  # Envoy's default
    assert not translate_route(routes(("ignore_port_in_host_matching", True))).match_host_port
    assert translate_route(routes(("virtual_hosts.0.domains", ["a.example:8080"]))).virtual_hosts[0].domains == (
        "a.example:8080",)

