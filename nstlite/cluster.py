"""The Dask ``distributed`` engine of sweeps, batches and figures (``pip install nstlite[distributed]``).

``DaskExecutor`` runs the tasks of ``nstlite.sweep`` (and, through ``map``, the panels of
``nstlite.figures``) on a Dask cluster: an embedded
``LocalCluster`` in this process by default, or an existing cluster by scheduler address
(started with Dask's own ``dask scheduler`` / ``dask worker`` commands). The tasks and their
results are the same either way; only where they run differs.

Threads. A task's work is mostly BLAS (the convolutions' GEMMs) plus NumPy transforms.
``plan_workers`` splits the cores into workers x threads per worker x BLAS threads per task;
independent tasks scale better side by side than one task over many BLAS threads, so the
default is one BLAS thread per task and as many one-thread workers as there are cores (fewer
when there are fewer tasks, each task then getting the spare cores as BLAS threads). Dask's
nanny sets ``OMP/MKL/OPENBLAS_NUM_THREADS=1`` in worker processes; the embedded cluster sets
them to the plan's count instead (with ``OPENBLAS_THREAD_TIMEOUT`` as nstlite sets it and
``NSTLITE_TRANSFORM_THREADS``), and every task also sets its own thread's OpenBLAS count
(``openblas_set_num_threads_local``), which holds on any worker.

Inputs travel as bytes with each task (the workers need no shared disk for them, and a
task whose worker dies can be rerun anywhere); the network is loaded once per worker
thread from the worker's own weights file (``--weights`` must name a path that exists on the
workers); results come back to this process, which writes every output atomically. A worker
that dies mid-task has its task rerun on another (Dask's ``allowed-failures``: ``retries``
in the embedded cluster, the scheduler's own setting on an existing one).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .errors import NstliteError

INSTALL_HINT = "pip install nstlite[distributed]"
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
DEFAULT_RETRIES = 2
CONNECT_TIMEOUT = "10s"  # how long to try an existing scheduler's address before giving up
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def require_distributed():
    """The ``distributed`` module; a one-line error with the install command when it is missing."""
    try:
        import distributed
    except ImportError:
        raise NstliteError(f"running tasks on Dask needs distributed: {INSTALL_HINT} "
                           "(or run them one by one in this process with --serial)") from None
    return distributed


def available_cores() -> int:
    """Cores this process may use (its CPU affinity where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class WorkerPlan:
    """How the cores are shared: ``workers`` x ``threads_per_worker`` tasks at once, each
    with ``blas_threads`` BLAS threads."""

    workers: int
    threads_per_worker: int
    blas_threads: int

    def env(self) -> dict:
        """The environment of an embedded worker process (before NumPy loads its BLAS)."""
        n = str(self.blas_threads)
        return {**{name: n for name in BLAS_ENV}, "NSTLITE_TRANSFORM_THREADS": n,
                "OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT", "1")}

    def describe(self) -> str:
        return (f"{self.workers} worker(s) x {self.threads_per_worker} thread(s), "
                f"{self.blas_threads} BLAS thread(s) per task")


def plan_workers(n_tasks: int, cores: int | None = None, workers: int | None = None,
                 threads_per_worker: int | None = None, blas_threads: int | None = None) -> WorkerPlan:
    """Workers, threads per worker and BLAS threads per task for ``n_tasks`` tasks on ``cores``.

    What is given is kept; the rest fills the cores: workers = cores // (threads x BLAS),
    at most one per task; BLAS threads = cores // (workers x threads). One thread per worker
    and one BLAS thread per task unless given (independent tasks side by side use the cores
    better than one task over several BLAS threads).
    """
    cores = cores or available_cores()
    for name, value in (("--workers", workers), ("--threads-per-worker", threads_per_worker),
                        ("--blas-threads", blas_threads)):
        if value is not None and int(value) < 1:
            raise NstliteError(f"{name} must be at least 1, not {value}")
    tpw = int(threads_per_worker or 1)
    if workers is None:
        workers = max(1, cores // (tpw * int(blas_threads or 1)))
        workers = max(1, min(workers, -(-max(1, n_tasks) // tpw)))  # no idle workers
    if blas_threads is None:
        blas_threads = max(1, cores // (int(workers) * tpw))
    return WorkerPlan(int(workers), tpw, int(blas_threads))


def worker_threads() -> dict:
    """What a worker runs with (``Client.run`` calls it on each): its BLAS environment and
    nstlite's transform threads."""
    from .fast.workspace import local_blas_threads, transform_threads

    env = {name: os.environ.get(name, "unset") for name in BLAS_ENV + ("OPENBLAS_THREAD_TIMEOUT",)}
    return {**env, "transform_threads": transform_threads(), "per_thread_blas": local_blas_threads() is not None}


def _dashboard_available() -> bool:
    return importlib.util.find_spec("bokeh") is not None


class DaskExecutor:
    """Runs sweep tasks on Dask: ``with DaskExecutor(...) as ex: execute(tasks, out, ex)``.

    Parameters
    ----------
    scheduler : address of an existing scheduler (``tcp://host:port``); None: the one in
        ``$DASK_SCHEDULER_ADDRESS``, else an embedded ``LocalCluster``
    plan : the embedded cluster's ``WorkerPlan`` (its ``blas_threads`` is set in each task on
        any cluster)
    processes : embedded workers as processes (the default) or as threads of this process
    retries : times a task is rerun when the worker running it dies (the embedded scheduler's
        ``distributed.scheduler.allowed-failures``; an existing scheduler keeps its own, 3 by
        default). A call that raises is not rerun: its exception is its outcome
    say : where the engine's one-line messages go (None: nowhere)
    """

    def __init__(self, scheduler: str | None = None, plan: WorkerPlan | None = None, processes: bool = True,
                 retries: int = DEFAULT_RETRIES, say: Callable[[str], None] | None = None):
        self.scheduler = scheduler or os.environ.get(SCHEDULER_ENV) or None
        self.plan = plan or plan_workers(1)
        self.processes = processes
        self.retries = int(retries)
        self.say = say or (lambda message: None)
        self.cluster = self.client = None
        self._futures: dict = {}
        self.description = ""

    # ----------------------------------------------------------------- start and stop
    def __enter__(self) -> DaskExecutor:
        distributed = require_distributed()
        if self.scheduler:
            self._connect(distributed)
        else:
            self._start_local(distributed)
        self._report_workers()
        return self

    def _start_local(self, distributed):
        plan = self.plan
        # processes: their BLAS environment, on the loopback; threads talk in-process
        extra = {"env": plan.env(), "host": "127.0.0.1"} if self.processes else {}
        import dask

        with dask.config.set({"distributed.scheduler.allowed-failures": self.retries}):
            self.cluster = distributed.LocalCluster(
                n_workers=plan.workers, threads_per_worker=plan.threads_per_worker, processes=self.processes,
                dashboard_address=":0",  # a free port: never a clash with another cluster
                silence_logs=logging.ERROR, **extra)
        self.client = distributed.Client(self.cluster)
        kind = "processes" if self.processes else "threads of this process"
        self.description = f"embedded LocalCluster ({kind}): {plan.describe()}"

    def _connect(self, distributed):
        try:
            self.client = distributed.Client(self.scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as e:  # ValueError: not an address (no port, unknown scheme)
            raise NstliteError(f"cannot reach the Dask scheduler at {self.scheduler}: {e}".splitlines()[0]) from None
        try:
            self.client.wait_for_workers(1, timeout=30)
        except TimeoutError:
            self.close()
            raise NstliteError(f"the Dask scheduler at {self.scheduler} has no workers; start some with "
                               f"`dask worker {self.scheduler}`") from None
        self.description = f"Dask scheduler {self.scheduler}: {self.plan.blas_threads} BLAS thread(s) per task"

    def _report_workers(self):
        """One line per distinct worker setting, and the dashboard when there is one."""
        try:
            info = self.client.run(worker_threads)
        except ModuleNotFoundError as e:
            self.close()
            raise NstliteError(f"the Dask workers cannot import nstlite ({e}): install nstlite on every worker") \
                from None
        threads = {w["nthreads"] for w in self.client.scheduler_info()["workers"].values()}
        self.say(f"engine: {self.description}; {len(info)} worker(s), {'/'.join(map(str, sorted(threads)))} "
                 "thread(s) each")
        for setting in sorted({tuple(sorted(v.items())) for v in info.values()}):
            self.say("engine: workers run with " + " ".join(f"{k}={v}" for k, v in setting))
        if self.cluster is None or _dashboard_available():
            link = getattr(self.client, "dashboard_link", None)
            if link and "dashboard" in self.client.scheduler_info().get("services", {}):
                self.say(f"engine: Dask dashboard at {link}")

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    # ----------------------------------------------------------------- tasks
    @property
    def blas_threads(self) -> int:
        """BLAS threads each task sets for its own thread."""
        return self.plan.blas_threads

    def record(self) -> dict:
        """What ran the tasks, for a results file (while the cluster runs)."""
        info = self.client.scheduler_info()["workers"].values()
        out = {"kind": "scheduler" if self.cluster is None else "local cluster", "description": self.description,
               "workers": len(info), "threads_per_worker": sorted({w["nthreads"] for w in info}),
               "blas_threads": self.plan.blas_threads}
        if self.cluster is None:
            out["address"] = self.scheduler
        else:
            out["processes"] = self.processes
        return out

    def total_threads(self) -> int:
        return max(1, sum(w["nthreads"] for w in self.client.scheduler_info()["workers"].values()))

    def map(self, fn: Callable, calls: Iterable[tuple], name: Callable[[tuple], str] = str):
        """Yield ``(args, outcome)`` for ``fn(*args)`` over ``calls`` as they finish: the result,
        or the exception when the call could not finish on the cluster (its workers died
        more than ``retries`` times...). At most twice as many calls are in flight as the cluster has
        threads, so ``calls`` may be a lazy iterator over thousands of inputs. ``name(args)``
        labels each call on Dask's dashboard. Any independent work can go through here (a
        figure's panels as well as a sweep's tasks)."""
        from distributed import as_completed

        pending = iter(calls)
        run_id = uuid.uuid4().hex[:8]
        finished = as_completed(with_results=True, raise_errors=False)

        def submit_next():
            args = next(pending, None)
            if args is None:
                return
            future = self.client.submit(fn, *args, key=f"{name(args)}-{run_id}", pure=False)
            self._futures[future.key] = (future, args)
            finished.add(future)

        for _ in range(2 * self.total_threads()):
            submit_next()
        for future, outcome in finished:
            _, args = self._futures.pop(future.key)
            submit_next()
            yield args, outcome if future.status == "finished" else _exception(future)

    def run(self, tasks: Sequence, read: Callable[[str], bytes]):
        """Yield ``(task, record)`` as sweep tasks finish (``nstlite.sweep.run_task`` on the
        workers). The image bytes go with each task, so the scheduler can rerun it elsewhere
        when its worker dies (data scattered to that worker alone would be lost with it), and
        ``map``'s window keeps only a few photos in flight."""
        from .sweep import run_task

        calls = ((t, read(t.content), [read(s) for s in t.styles], self.plan.blas_threads) for t in tasks)
        for (task, *_), outcome in self.map(run_task, calls, name=lambda args: f"stylize-{args[0].name}"):
            yield task, outcome if isinstance(outcome, dict) else _failure(task, outcome, self.retries)

    def running(self) -> int:
        """Tasks sent and not yet finished."""
        return len(self._futures)

    def cancel(self) -> None:
        """Cancel every task not yet finished (Ctrl-C)."""
        if self.client is not None and self._futures:
            self.client.cancel([f for f, _ in self._futures.values()], force=True)
        self._futures.clear()


def _exception(future) -> BaseException:
    """The exception of a future that erred or was cancelled."""
    try:
        future.result()
    except BaseException as e:  # noqa: BLE001 - handed to the caller as the outcome
        return e
    return RuntimeError(f"task {future.key} ended as {future.status}")


def failure_reason(error: BaseException, retries: int) -> str:
    """One line saying why a call could not finish on the cluster (its workers died, the
    workers cannot import nstlite, or what it raised)."""
    name = type(error).__name__
    if name == "KilledWorker":
        reason = f"the workers running it kept dying ({retries + 1} times or more: out of memory?)"
    elif isinstance(error, ModuleNotFoundError):
        reason = f"the worker cannot import nstlite ({error}): install nstlite on every worker"
    else:
        reason = f"{name}: {error}"
    return " ".join(reason.split())


def _failure(task, error, retries) -> dict:
    """The record of a task that raised on the cluster (the worker died, or could not run it)."""
    return {"name": task.name, "status": "failed", "reason": failure_reason(error, retries), "worker": "?"}
