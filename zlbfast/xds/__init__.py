"""xDS for zlbfast: Envoy v3 bootstraps, ADS (state-of-the-world and delta) over gRPC, REST-JSON polling and
watched files, all feeding one pipeline that installs zlbfast.model.Config on the engine and persists every
accepted state (see docs/xds.md)."""

from zlbfast.xds.agent import Agent, serve

__all__ = ["Agent", "serve"]
