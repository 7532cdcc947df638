# cython: language_level=3
"""The one boundary between Python and the C data plane (see DESIGN.md)."""

include "_loadgen.pxi"
