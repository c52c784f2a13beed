"""Triton kernels of ebm_fast, shipped as ``ebm_fast.kernels`` (source folder ``kernels/``)."""
