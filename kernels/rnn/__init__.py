"""The `rnn` block's core: the gated linear recurrence (Triton) and its float32 reference."""
