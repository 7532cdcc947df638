"""atheris harness for the C ClusterLoadAssignment decoder (csrc/eds.c, zlbfast.xds.resources.decode_assignment).

Invariant: for any bytes, the decoder never crashes, and whatever it accepts the exact path (protobuf parse +
translate_assignment) accepts too, with the same endpoints in the same order and the same overprovisioning
factor. (What it declines is the exact path's to judge: declining is always safe.)

Run: PYTHONPATH=. python tests/fuzz/fuzz_eds.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from envoy.config.endpoint.v3 import endpoint_pb2
    from google.protobuf import json_format

    from zlbfast.xds import resources as r


def _seed(**extra: object) -> bytes:
    def lb(host: str, port: int, **more: object) -> dict[str, object]:
        return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}, **more}

    return json_format.ParseDict({"cluster_name": "c", "endpoints": [
        {"locality": {"region": "r", "zone": "z"}, "priority": 1, "load_balancing_weight": 2,
         "lb_endpoints": [lb("10.0.0.1", 80, health_status="DEGRADED", load_balancing_weight=3),
                          lb("2001:db8::1", 443, metadata={"filter_metadata": {"x": {"k": "v"}}})]},
        {"lb_endpoints": [lb("10.0.0.2", 81)]}], **extra}, endpoint_pb2.ClusterLoadAssignment()).SerializeToString()


# Starting points that reach every field the decoder reads.
SEEDS = [_seed(), _seed(policy={"overprovisioning_factor": 150})]


def TestOneInput(data: bytes) -> None:
    fast = r.decode_assignment(data)
    if fast is None:
        return
    exact = r.translate_assignment(endpoint_pb2.ClusterLoadAssignment.FromString(data))
    assert fast.name == exact.name and fast.overprovisioning == exact.overprovisioning, (fast, exact)
    assert [vars(e) for e in fast.endpoints] == [vars(e) for e in exact.endpoints], (fast, exact)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
