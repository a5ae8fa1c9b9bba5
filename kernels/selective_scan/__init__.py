"""Mamba-1's selective scan: the float32 reference (`reference.py`: `selective_scan`,
`selective_scan_step`) and the Triton kernels (`triton.py`: `selective_scan_triton`, the
same maths and signature, forward and a recomputing backward; CUDA, or Triton's interpreter
on the CPU). Import the modules directly: importing `triton.py` decorates its kernels, which
must happen after TRITON_INTERPRET is set (kernels/runtime.py)."""
