"""SSD (the Mamba-2 scan): float32 references and fla's chunk_simple_gla as the fast path.

`reference.ssd_chunked` / `reference.ssd_naive` / `reference.ssd_step` are plain PyTorch;
`fla_backend.ssd_fla` runs the same op through flash-linear-attention (CUDA only).
All take x [B, T, H, P], dt [B, T, H], A [H], B and C [B, T, G, N].
"""
