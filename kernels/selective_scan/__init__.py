"""Mamba-1's selective scan: the float32 reference (`reference.py`). No fast path yet: see
the module docstring of `reference.py`."""
