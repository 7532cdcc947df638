"""The C EDS decoder (csrc/eds.c, behind resources.decode_assignment) against the exact path (translate_assignment):
whatever the decoder accepts, the exact path accepts too and translates to the same endpoints, which the model's
validation passes; whatever it declines reaches the exact path, whose message the pipeline reports."""

from __future__ import annotations

import random
from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from tests.xds.adsserver import pack
from zlbfast import config, model
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
                          lb("2001:0db8:0::1", health_status="DRAINING")]},
        {"locality": {"zone": "z2"}, "lb_endpoints": [{"endpoint": {"hostname": "h", "address": {
            "socket_address": {"address": "10.0.0.3", "port_value": 9}}}}]},
        {"priority": 127, "lb_endpoints": [lb("2001:db8::7", 65535, load_balancing_weight=1_000_000,
                                               health_status="TIMEOUT"),
                                           lb("10.0.0.1", 81, health_status="UNHEALTHY")]}],
        policy={"overprovisioning_factor": 200}),
    "empty": cla([]),
}

# Valid, but outside what the decoder vouches for: the exact path translates them (and the model's validation judges
# the addresses and zones).
SLOW_BUT_VALID = {
    "empty health_check_config": cla([{"lb_endpoints": [{"endpoint": {"health_check_config": {}, "address": {
        "socket_address": {"address": "10.0.0.1", "port_value": 1}}}}]}]),
    "non-ASCII zone": cla([{"locality": {"zone": "zürich"}, "lb_endpoints": [lb("10.0.0.1")]}]),
    "IPv4-mapped IPv6": cla([{"lb_endpoints": [lb("::ffff:10.0.0.1")]}]),
    "IPv6 loopback": cla([{"lb_endpoints": [lb("0:0::1")]}]),
    "reserved IPv4": cla([{"lb_endpoints": [lb("240.0.0.1")]}]),
}

REFUSED = {
    "unsupported field": (cla([{"lb_endpoints": [lb("10.0.0.1")]}], named_endpoints={"n": lb("10.0.0.9")["endpoint"]}),
                          "named_endpoints: field is not supported"),
    "endpoint name": (cla([{"lb_endpoints": [{"endpoint_name": "e"}]}]), "lb_endpoints[0].endpoint_name"),
    "DNS name": (cla([{"lb_endpoints": [lb("backend")]}]), "expected a numeric IP address (no DNS)"),
    "NUL in address": (cla([{"lb_endpoints": [lb("10.0.0.1\0")]}]), "expected a numeric IP address (no DNS)"),
    "UDP": (cla([{"lb_endpoints": [lb("10.0.0.1", 80)]}]), "only TCP is supported"),
    "port 0": (cla([{"lb_endpoints": [lb("10.0.0.1", 0)]}]), "port_value: must be between 1 and 65535"),
    "weight 0": (cla([{"lb_endpoints": [lb("10.0.0.1", load_balancing_weight=0)]}]),
                 "load_balancing_weight: must be between 1 and 1000000, got 0"),
    "priority 128": (cla([{"priority": 128, "lb_endpoints": [lb("10.0.0.1")]}]), "priority: must be at most 127"),
    "duplicate": (cla([{"lb_endpoints": [lb("10.0.0.1")]}, {"priority": 1, "lb_endpoints": [lb("10.0.0.1")]}]),
                  "endpoints[1].lb_endpoints[0].endpoint.address: duplicate endpoint 10.0.0.1:80"),
    "duplicate IPv6 spellings": (cla([{"lb_endpoints": [lb("::2"), lb("0:0::2")]}]),
                                 "endpoints[0].lb_endpoints[1].endpoint.address: duplicate endpoint ::2:80"),
    "health check config": (cla([{"lb_endpoints": [{"endpoint": {"health_check_config": {"port_value": 1},
                                                                  "address": {"socket_address": {
                                                                      "address": "10.0.0.1", "port_value": 1}}}}]}]),
                            "active health checking is not supported yet"),
    "no cluster name": (cla([{"lb_endpoints": [lb("10.0.0.1")]}], cluster_name=""), "cluster_name: must not be empty"),
}
REFUSED["UDP"][0].endpoints[0].lb_endpoints[0].endpoint.address.socket_address.protocol = 1


def translate_any(msg: endpoint_pb2.ClusterLoadAssignment) -> r.Assignment:
    """What the pipeline does with a resource off the wire."""
    out = r.unpack(r.ENDPOINT, pack(msg))
    return out if isinstance(out, r.Assignment) else r.translate_assignment(out)


def assert_same(fast: r.Assignment, exact: r.Assignment) -> None:
    assert isinstance(fast.endpoints, r._native.EndpointTable) and isinstance(exact.endpoints, tuple)
    assert fast == exact and exact == fast
    assert [vars(e) for e in fast.endpoints] == [vars(e) for e in exact.endpoints]
    assert hash(fast.endpoints) == hash(exact.endpoints)


def validates(a: r.Assignment) -> None:
    """The model's validation of a cluster holding these endpoints (the exact-path tuple is judged endpoint by
    endpoint; that is what the decoder's table is excused from)."""
    config.validate(model.Config(listeners=(), clusters=(model.Cluster("c", a.endpoints),)))


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_decoder_translates_like_the_exact_path(name):
    msg = ACCEPTED[name]
    fast = r.decode_assignment(msg.SerializeToString())
    assert fast is not None  # the decoder takes it
    exact = r.translate_assignment(msg)
    assert_same(fast, exact)
    validates(exact)
    assert translate_any(msg) == exact


def test_decoded_table_reads_like_a_tuple():
    exact = r.translate_assignment(ACCEPTED["labels and values"])
    fast = r.decode_assignment(ACCEPTED["labels and values"].SerializeToString())
    assert fast is not None
    table, eps = fast.endpoints, exact.endpoints
    assert len(table) == len(eps) == 5 and fast.overprovisioning == 200
    assert table[0] == eps[0] and table[-1] == eps[-1] and table[1:3] == eps[1:3]
    assert {e.zone for e in table} == {"z1", "z2", ""} and table.priority_counts() == {2: 2, 0: 1, 127: 2}
    assert table[1].address == "2001:db8::1" and table[3].address == "2001:db8::7" and table[3].weight == 1_000_000
    assert [e.health for e in table] == ["degraded", "unhealthy", "healthy", "unhealthy", "unhealthy"]
    with pytest.raises(IndexError):
        table[5]
    assert table != eps[:-1] and table != r.decode_assignment(ACCEPTED["plain"].SerializeToString()).endpoints


@pytest.mark.parametrize("name", sorted(SLOW_BUT_VALID))
def test_unusual_values_take_the_exact_path(name):
    msg = SLOW_BUT_VALID[name]
    assert r.decode_assignment(msg.SerializeToString()) is None
    got = translate_any(msg)
    assert isinstance(got.endpoints, tuple) and got == r.translate_assignment(msg)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusals_carry_the_exact_paths_message(name):
    msg, problem = REFUSED[name]
    assert r.decode_assignment(msg.SerializeToString()) is None
    with pytest.raises(r.ResourceError) as exact:
        r.translate_assignment(msg)
    with pytest.raises(r.ResourceError) as fast:
        translate_any(msg)
    assert problem in str(exact.value)
    assert str(fast.value) == str(exact.value)


def test_non_canonical_encodings_take_the_exact_path():
    plain = cla([{"lb_endpoints": [lb("10.0.0.1")]}])
    # priority 0 written out explicitly: valid, and the same as leaving it out.
    locality = plain.endpoints[0].SerializeToString() + b"\x28\x00"  # field 5 (priority), varint 0
    explicit = b"\x0a\x01c" + b"\x12" + bytes([len(locality)]) + locality
    assert r.decode_assignment(explicit) is not None
    # cluster_name twice: protobuf keeps the last one; a serializer never writes that, so the exact path decides.
    twice = b"\x0a\x01x" + plain.SerializeToString()
    assert r.decode_assignment(twice) is None
    # Found by tests/fuzz/fuzz_eds.py: a length written in 7 bytes, which protobuf's parser refuses.
    assert r.decode_assignment(b"\x12\x00\x0a\x013\x12\x80\x80\x80\x80\x80\x80\x00") is None
    for value in (explicit, twice):
        msg = endpoint_pb2.ClusterLoadAssignment.FromString(value)
        assert translate_any(msg).endpoints == r.translate_assignment(plain).endpoints


# Every sub-message of a CLA the decoder reads, as a path from the root (attribute, or index into a repeated field).
_PATHS: tuple[tuple[Any, ...], ...] = (
    (), ("policy",), ("endpoints", 0), ("endpoints", 0, "locality"), ("endpoints", 0, "lb_endpoints", 0),
    ("endpoints", 0, "lb_endpoints", 0, "endpoint"), ("endpoints", 0, "lb_endpoints", 0, "endpoint", "address"),
    ("endpoints", 0, "lb_endpoints", 0, "endpoint", "address", "socket_address"),
)


def _at(msg: Message, path: tuple[Any, ...]) -> Message:
    for step in path:
        msg = msg[step] if isinstance(step, int) else getattr(msg, step)
    return msg


def _set_something(msg: Message, fd: Any) -> None:
    """Gives field fd of msg a value that is not its default."""
    value = getattr(msg, fd.name)
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        value.get_or_create("k")
    elif fd.message_type is not None:
        (value.add() if fd.is_repeated else value).SetInParent()
    else:
        sample: Any = {fd.TYPE_BOOL: True, fd.TYPE_STRING: "x", fd.TYPE_ENUM: 1}.get(fd.type, 1)
        if fd.is_repeated:
            value.append(sample)
        else:
            setattr(msg, fd.name, sample)


def test_every_field_outside_the_supported_list_goes_to_the_exact_path():
    base = ACCEPTED["labels and values"]
    checked = 0
    for path in _PATHS:
        desc = _at(base, path).DESCRIPTOR
        for fd in desc.fields:
            if fd.name in r._EDS_FIELDS[desc.full_name]:
                continue
            msg = endpoint_pb2.ClusterLoadAssignment()
            msg.CopyFrom(base)
            _set_something(_at(msg, path), fd)
            assert r.decode_assignment(msg.SerializeToString()) is None, (desc.full_name, fd.name)
            with pytest.raises(r.ResourceError, match=fd.name):
                translate_any(msg)
            checked += 1
    assert checked >= 15  # the fields Envoy defines beyond the supported ones


def _random_cla(rng: random.Random) -> endpoint_pb2.ClusterLoadAssignment:
    hosts = ["10.0.0.1", "10.0.0.2", "192.168.1.9", "::1", "2001:db8::1", "0:0::2", "::2", "224.0.0.1", "0.0.0.0",
             "::", "ff02::1", "::ffff:10.0.0.1", "255.255.255.255", "backend", "1.2.3", "10.0.0.01"]
    localities = []
    for _ in range(rng.randint(0, 3)):
        eps = []
        for _ in range(rng.randint(0, 4)):
            e = lb(rng.choice(hosts), rng.choice([0, 1, 80, 65535]))
            if rng.random() < 0.3:
                e["load_balancing_weight"] = rng.choice([0, 1, 5, 1_000_000, 1_000_001])
            if rng.random() < 0.3:
                e["health_status"] = rng.choice(["UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED"])
            if rng.random() < 0.3:  # labels the decoder walks without reading (mutations land in them too)
                e["metadata"] = {"filter_metadata": {"istio": {"uid": "kubernetes://p", "n": 1.5,
                                                               "l": [True, None, {"k": "v"}]}},
                                 "typed_filter_metadata": {"t": {"@type": "type.googleapis.com/google.protobuf.Empty"}}}
            eps.append(e)
        loc: dict[str, Any] = {"lb_endpoints": eps, "priority": rng.choice([0, 0, 1, 127, 128])}
        if rng.random() < 0.5:
            loc["locality"] = {"zone": rng.choice(["", "z", "a b", "x" * 127, "x" * 128])}
        localities.append(loc)
    extra = {"policy": {"overprovisioning_factor": rng.choice([100, 140, 0])}} if rng.random() < 0.3 else {}
    return cla(localities, **extra)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(4)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2:
            del b[pos:pos + rng.randint(1, 4)]
        else:
            del b[pos:]
    return bytes(b)


def _exact(value: bytes) -> r.Assignment | Exception:
    try:
        return r.translate_assignment(endpoint_pb2.ClusterLoadAssignment.FromString(value))
    except (DecodeError, r.ResourceError) as exc:
        return exc


def test_decoder_never_accepts_what_the_exact_path_would_not():
    """Random assignments (valid and invalid values) and random corruptions of their encodings: whatever the decoder
    accepts, the exact path translates to the very same endpoints and the model's validation passes."""
    rng = random.Random(20240611)
    accepted = 0
    for i in range(3000):
        value = _random_cla(rng).SerializeToString()
        if i % 2:
            value = _mutate(rng, value)
        fast = r.decode_assignment(value)
        if fast is None:
            continue
        exact = _exact(value)
        assert isinstance(exact, r.Assignment), (value, exact)
        assert_same(fast, exact)
        validates(exact)
        accepted += 1
    assert accepted > 300  # the property says something about the fast path
