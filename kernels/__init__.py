"""Fused kernels (Triton) and their float32 references, one folder per op."""
