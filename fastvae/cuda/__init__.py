"""CUDA backend (CuPy). Filled by the CUDA-backend issue; until then CuPy arrays are refused."""
