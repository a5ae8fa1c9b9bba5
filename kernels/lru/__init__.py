"""The diagonal linear recurrence h_t = a_t * h_{t-1} + x_t (the RG-LRU's scan): a float32
reference (`reference.py`) and fla's HGRN kernels as the fast path (`fla_backend.py`)."""
