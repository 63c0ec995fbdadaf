"""Run batches, workflow steps and command-line steps on a Dask cluster.

Install with ``pip install 'trioflow[dask]'``. :func:`open_cluster` connects to a scheduler
(or starts a local cluster) for an ``async with`` block; :func:`on_dask` makes an operation
that runs one call on a worker, for anything that takes operations. ``import trioflow`` never
imports this module nor Dask.
"""

from __future__ import annotations

from ._bridge import ClusterStatistics as ClusterStatistics
from ._cluster import Cluster as Cluster
from ._cluster import on_dask as on_dask
from ._cluster import open_cluster as open_cluster
from ._errors import WorkerLostError as WorkerLostError

__all__ = ("Cluster", "ClusterStatistics", "WorkerLostError", "on_dask", "open_cluster")


def _fix_module_names() -> None:
    # Public objects report their public path (trioflow.dask.X), not the private module.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("trioflow.dask._"):
            obj.__module__ = "trioflow.dask"


_fix_module_names()
del _fix_module_names
