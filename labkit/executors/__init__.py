"""Where a call runs: locally (:mod:`labkit.executors.local`: the event loop, a
thread, a process, an Executor you pass) or on Dask (:mod:`labkit.executors.dask`).

:class:`Backend` is what the runner asks for an :class:`Invoker` per function; the
shared parts (:class:`Invoker`, :class:`AttemptExpired`) live in
:mod:`labkit.executors.base`.
"""

from labkit.executors.base import AttemptExpired, Call, Invoker, is_async_callable
from labkit.executors.dask import DaskBackend, DaskExecutor, is_dask_client
from labkit.executors.local import Backend

__all__ = (
    "AttemptExpired",
    "Backend",
    "Call",
    "DaskBackend",
    "DaskExecutor",
    "Invoker",
    "is_async_callable",
    "is_dask_client",
)
