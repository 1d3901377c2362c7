"""End-to-end benchmark: the ``fastvae bench`` suite (fastvae/bench/), kept at its old path.

    .venv/bin/python benchmarks/end_to_end.py [--quick] [--threads 1,2] [--json out.json] ...

is the same as ``fastvae bench ...`` or ``python -m fastvae.bench ...``; see
``fastvae/bench/__init__.py`` for what each workload includes.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fastvae.bench import main  # noqa: E402  (no NumPy: the workers set their threads first)

if __name__ == "__main__":
    sys.exit(main())
