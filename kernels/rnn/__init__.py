"""The `rnn` block's core: gated linear recurrence with fused gates (Triton) and its float32 reference."""
