"""python -m fastvae.bench: the benchmark suite (see fastvae/bench/__init__.py)."""
import sys

from . import main

sys.exit(main())
