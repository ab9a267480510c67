"""Triton kernels (``@triton.jit`` only: no host logic lives here)."""
