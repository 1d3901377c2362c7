"""Host execution harness: runs CUDA C kernels on the CPU (cuda_host.h + cuda_host.py), and its self-tests.

Taken into the project from the prototype in ../shared/reference/cuda-host; owned here. The kernels
under kernels/ and bad/ are the harness's own examples (good kernels, and bugs it must expose);
fastvae's kernels live in the top-level kernels/ and are tested in tests/cuda/.
"""
