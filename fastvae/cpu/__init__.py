"""Numba CPU backend: one module per operation, same file stems as fastvae/_reference.py."""
