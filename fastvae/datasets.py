"""``fastvae.datasets``: the public names of ``fastvae.data``, under the name the issue uses."""
from fastvae.data import *  # noqa: F401,F403
from fastvae.data import __all__  # noqa: F401
