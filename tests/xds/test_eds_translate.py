"""The fast EDS path (slim parse + per-endpoint reuse) must translate exactly like the exact path: the same
Endpoints for what it accepts, and the exact path's NACK message for anything it does not."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import json_format

from tests.xds.adsserver import pack
from zlbfast.xds import resources as r


def cla(endpoints: list[dict[str, Any]], **extra: Any) -> endpoint_pb2.ClusterLoadAssignment:
    return json_format.ParseDict({"cluster_name": "c", "endpoints": endpoints, **extra},
                                 endpoint_pb2.ClusterLoadAssignment())


def lb(host: str, port: int = 80, **extra: Any) -> dict[str, Any]:
    return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}, **extra}


ACCEPTED = {
    "plain": cla([{"lb_endpoints": [lb("10.0.0.1"), lb("10.0.0.2", 81)]}]),
    "labels and values": cla([
        {"locality": {"region": "r", "zone": "z1", "sub_zone": "s"}, "priority": 2, "load_balancing_weight": 3,
         "lb_endpoints": [lb("10.0.0.1", health_status="DEGRADED", load_balancing_weight=7,
                             metadata={"filter_metadata": {"x": {"k": "v"}}}),
                          lb("0:0::1", health_status="DRAINING")]},
        {"locality": {"zone": "z2"}, "lb_endpoints": [{"endpoint": {"hostname": "h", "address": {
            "socket_address": {"address": "10.0.0.3", "port_value": 9}}}}]}],
        policy={"overprovisioning_factor": 200}),
    "empty": cla([]),
}

REFUSED = {
    "unsupported field": (cla([{"lb_endpoints": [lb("10.0.0.1")]}], named_endpoints={"n": lb("10.0.0.9")["endpoint"]}),
                          "named_endpoints: field is not supported"),
    "endpoint name": (cla([{"lb_endpoints": [{"endpoint_name": "e"}]}]), "lb_endpoints[0].endpoint_name"),
    "DNS name": (cla([{"lb_endpoints": [lb("backend")]}]), "expected a numeric IP address (no DNS)"),
    "UDP": (cla([{"lb_endpoints": [lb("10.0.0.1", 80)]}]), "only TCP is supported"),
    "port 0": (cla([{"lb_endpoints": [lb("10.0.0.1", 0)]}]), "port_value: must be between 1 and 65535"),
    "weight 0": (cla([{"lb_endpoints": [lb("10.0.0.1", load_balancing_weight=0)]}]),
                 "load_balancing_weight: must be between 1 and 1000000, got 0"),
    "priority 128": (cla([{"priority": 128, "lb_endpoints": [lb("10.0.0.1")]}]), "priority: must be at most 127"),
    "duplicate": (cla([{"lb_endpoints": [lb("10.0.0.1")]}, {"priority": 1, "lb_endpoints": [lb("10.0.0.1")]}]),
                  "endpoints[1].lb_endpoints[0].endpoint.address: duplicate endpoint 10.0.0.1:80"),
    "health check config": (cla([{"lb_endpoints": [{"endpoint": {"health_check_config": {"port_value": 1},
                                                                  "address": {"socket_address": {
                                                                      "address": "10.0.0.1", "port_value": 1}}}}]}]),
                            "active health checking is not supported yet"),
}
REFUSED["UDP"][0].endpoints[0].lb_endpoints[0].endpoint.address.socket_address.protocol = 1


def translate_any(msg: endpoint_pb2.ClusterLoadAssignment, previous: r.Assignment | None = None) -> r.Assignment:
    """What the pipeline does with a resource off the wire."""
    return r.translate_assignment(r.unpack(r.ENDPOINT, pack(msg)), previous)


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_fast_path_translates_like_the_exact_path(name):
    msg = ACCEPTED[name]
    assert r.parse_assignment(msg.SerializeToString()) is not None  # the fast path takes it
    fast = translate_any(msg)
    exact = r.translate_assignment(msg, None)
    assert fast == exact
    assert fast.endpoints == exact.endpoints and [vars(e) for e in fast.endpoints] == [vars(e) for e in exact.endpoints]
    # A repeat reuses every Endpoint object (so validation skips them), from either path.
    again = translate_any(msg, exact)
    assert all(a is b for a, b in zip(again.endpoints, exact.endpoints, strict=True))


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusals_carry_the_exact_paths_message(name):
    msg, problem = REFUSED[name]
    with pytest.raises(r.ResourceError) as exact:
        r.translate_assignment(msg, None)
    with pytest.raises(r.ResourceError) as fast:
        translate_any(msg)
    assert problem in str(exact.value)
    assert str(fast.value) == str(exact.value)


def test_non_canonical_encoding_falls_back_to_the_exact_path():
    # priority 0 written out explicitly: valid, but it re-serializes shorter, so the size check cannot vouch for it.
    plain = cla([{"lb_endpoints": [lb("10.0.0.1")]}])
    locality = plain.endpoints[0].SerializeToString() + b"\x28\x00"  # field 5 (priority), varint 0
    value = b"\x0a\x01c" + b"\x12" + bytes([len(locality)]) + locality
    assert r.parse_assignment(value) is None
    msg = r.unpack(r.ENDPOINT, pack(endpoint_pb2.ClusterLoadAssignment.FromString(value)))
    assert r.translate_assignment(msg, None).endpoints == translate_any(plain).endpoints
