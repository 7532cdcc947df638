"""`zlbfast bench`: throughput, latency and proxy cost of zlbfast against a
direct baseline and peer proxies, driven by the native load generator and
built-in backends (zlbfast._native). See docs/bench.md."""
