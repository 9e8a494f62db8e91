"""Triton kernels for normalization layers with per-example gradient outputs.

Importing this package needs the ``triton`` package; `hf_gns.patch` imports it lazily.
"""
