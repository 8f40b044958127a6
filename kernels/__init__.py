"""Triton kernels and their microbenchmarks (importable as `prp.kernels`)."""
