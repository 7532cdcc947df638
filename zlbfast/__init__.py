"""zlbfast: a decentralized (ZeroLB) load-balancing proxy with a native C data plane."""

__version__ = "0.1.0"
