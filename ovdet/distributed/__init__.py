"""Batch inference across processes and machines.

* :mod:`ovdet.distributed.raydata` — Ray Data: images read and decoded by Ray, a pool of actors
  that each load the detector once, results written as parquet (``ovdet predict --engine ray``).

Ray and pyarrow are imported only when a pipeline is built or run (the ``[ray]`` extra).
"""

from ovdet.distributed.raydata import *  # noqa: F403  (raydata's __all__ is this package's)
from ovdet.distributed.raydata import __all__  # noqa: F401
