"""Gated linear attention and the gated delta rule: float32 references (`reference.py`,
step by step) and flash-linear-attention's chunked and fused-recurrent kernels as the fast
path (`fla_backend.py`, CUDA, package `fla-core`)."""
