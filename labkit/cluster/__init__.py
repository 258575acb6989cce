"""Beyond one machine: running labkit's calls on a Dask cluster.

The package's parts: the executor itself (:mod:`labkit.executors.dask`, re-exported
here), worker topics (:mod:`labkit.cluster.topics`), GPU workers
(:mod:`labkit.cluster.gpus`) and Slurm jobs as workers (:mod:`labkit.cluster.slurm`,
:func:`slurm`).

Pass a ``distributed.Client`` as the ``executor`` of :func:`labkit.run_parallel`,
:class:`labkit.Runner` or :func:`labkit.run_parallel_sync` (or a
:class:`DaskExecutor` to ask for GPUs or other worker resources) and every attempt
becomes one Dask task, submitted with ``pure=False`` so that identical arguments
never share a key. Everything else stays in the caller's process and behaves as in
a local run: the concurrency cap (tasks in flight on the cluster), retries,
per-attempt timeouts, the rate limit, priorities, events, and the
:class:`labkit.TaskResult`/:class:`labkit.RunReport` of each item. A failing task
comes back with the exception its function raised, of the same type and message
as locally. Cancelling the caller, or a timed-out attempt, cancels the Dask
future; an async function still running on a worker is then cancelled there too
(within about 50 ms), while a sync one runs to its end, as in a local thread.

Both client kinds work. An asynchronous client (``Client(..., asynchronous=True)``)
is awaited directly on its own loop. A synchronous client runs its own loop in
another thread; labkit waits for its futures on that loop and hands the outcome
back to the caller's loop, which never blocks. The same goes for an asynchronous
client whose loop runs in another thread. In a script, where
:func:`labkit.run_parallel_sync` starts a fresh loop, pass a synchronous client.

Functions run on the workers: they and their items must pickle (cloudpickle
handles closures and lambdas) and labkit must be importable there. A task is
pickled here and unpickled by the task itself on its worker, so a function from a
module the workers cannot import fails its task at once with
:class:`labkit.errors.WorkerImportError`, naming the module and the ways out
(``cloudpickle.register_pickle_by_value``, ``client.upload_file``, the workers'
``PYTHONPATH``). Async functions
run on the worker in a fresh event loop of their own, one per task, in the
worker's task thread, so a slow coroutine never stalls the worker's heartbeats.

When Dask pays
    Every task crosses the network twice and passes through the scheduler: about
    2 to 4 ms per task on a small machine, against a few microseconds for a local
    coroutine and about 20 µs for a local thread. Use a cluster for tasks of
    100 ms or more, or when one machine lacks the cores, memory or GPUs. Set
    ``max_concurrency`` to the cluster's thread count (``sum(client.nthreads()
    .values())``) or a little more: items beyond it wait on the scheduler, and a
    per-attempt ``timeout`` counts that wait.

GPUs
    On one machine, :class:`labkit.GPUPool` hands whole GPUs to instances by free
    memory and load and pins each instance through ``CUDA_VISIBLE_DEVICES``. Dask
    does neither: a worker's ``resources={"GPU": 1}`` is only a counter the
    scheduler subtracts from. :func:`gpu_cluster` joins the two: it starts one
    worker per GPU of an inventory, pins the worker's process to that GPU's UUID
    through its nanny's environment and advertises ``GPU`` resources, so that
    ``DaskExecutor(client, gpus=n)`` (``gpus_per_instance`` of an experiment)
    lands each task on a worker that owns ``n`` GPUs and sees only them. The pool
    and the cluster are alternatives, never stacked: on a cluster the scheduler
    places tasks, and the worker's pinned GPUs are the task's. On other machines
    start the same workers by hand::

        CUDA_VISIBLE_DEVICES=GPU-... dask worker tcp://scheduler:8786 \\
            --nworkers 1 --nthreads 1 --resources GPU=1

Live events from workers
    :func:`publish` (inside a task, on a worker) and :func:`subscribe` (in the
    caller) stream messages, such as timeline samples, while tasks run. Every
    message passes through the scheduler, so a worker batches them: one
    scheduler message per topic every 0.1 s, when 500 are pending, and when the
    task that published them ends (so a task's messages arrive before its result).

A remote cluster is a scheduler address away: ``Client("tcp://host:8786")``.
"""

from labkit.cluster.gpus import gpu_cluster
from labkit.cluster.slurm import SlurmCluster, SlurmOptions, SlurmStats, slurm
from labkit.cluster.topics import publish, subscribe
from labkit.executors.dask import DaskBackend, DaskExecutor

__all__ = (
    "DaskBackend",
    "DaskExecutor",
    "SlurmCluster",
    "SlurmOptions",
    "SlurmStats",
    "gpu_cluster",
    "publish",
    "slurm",
    "subscribe",
)
