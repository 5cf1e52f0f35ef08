"""The stage executor: independent work runs in this process (the default) or as tasks on a Ray cluster.

The one seam between edgepack's stages and a cluster. API (all another module needs):

    from edgepack.executor import Job, Failed, executor

    with executor(ray_address) as ex:            # None: in-process; "auto" or "HOST:6379": Ray
        data = ex.share(ds)                      # one copy for every job (Ray: the object store)
        results = ex.run([Job(fn, (data, 1), name="compress prune", num_cpus=1, memory=2 << 30),
                          Job(fn2, (data,), name="compare", timing=True)])
        for i, outcome in ex.as_completed(jobs): ...   # each as it finishes: Done(value, host, seconds)

`results[i]` is `jobs[i].fn(*args, **kwargs)`'s return value, or a `Failed` (its message) when the job
raised an EdgepackError: a problem with the user's input is a result to report, not a crash and not
worth retrying. Any other exception propagates. `ray_address` None falls back to the environment
variable EDGEPACK_RAY_ADDRESS; unset or empty means in-process, and then Ray is never imported.
A HOST:PORT address must answer within CONNECT_SECONDS (checked before Ray is imported; Ray itself
would retry for minutes), and Ray's own connect is bounded by RAY_CONNECT_ENV: a wrong address is one
line in seconds.

In-process, jobs run one after another in list order, exactly as if called directly; with
`workers` > 1, a batch of at least MIN_POOLED jobs all marked `parallel` (work that keeps about one
core busy: exports) runs on that many spawned worker processes instead, each holding one copy of what
`share` was given (sent once, when the pool starts). On Ray, every
job is one `ray.remote` task with its declared `num_cpus` and `memory` (bytes; 0: not declared) and
`max_retries` (a worker process that dies mid-task, e.g. killed or out of memory, is retried on
another worker; jobs must therefore write their outputs atomically and deterministically, as every
edgepack stage does). Jobs marked `timing` (latency measurement) also take one unit of the custom
resource `edgepack_timing`, which each node offers once (`ray start --resources
'{"edgepack_timing": 1}'`), so at most one timing job runs per host at a time.
Functions and arguments must be picklable (module-level functions); on a real cluster every node
needs the same edgepack installed and the same paths (a shared filesystem for outputs).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import platform
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from edgepack.errors import EdgepackError
from edgepack.runtime.cpu import usable_cores

ENV_VAR = "EDGEPACK_RAY_ADDRESS"
TIMING_RESOURCE = "edgepack_timing"  # custom Ray resource: one per node, held by latency work
MAX_RETRIES = 3  # Ray retries of a task whose worker process died (not of errors it raised)
GIB = 1 << 30
CONNECT_SECONDS = 10  # the most `--ray HOST:PORT` waits for the address to answer before it gives up
# Ray's own connect budget once the address answers but is no Ray head (its defaults: 20 tries of ~35 s,
# over 10 minutes; these: one try, ~20 s measured). Ray reads them from the environment when it is
# imported, so they are set before that, unless the user set them.
RAY_CONNECT_ENV = {"RAY_py_gcs_connect_timeout_s": "5", "RAY_NUM_REDIS_GET_RETRIES": "1"}
RAY_CONNECT_SECONDS = 20  # what the error message promises for that case


@dataclass(frozen=True)
class Job:
    """One independent piece of work and what it needs."""

    fn: Callable[..., Any]  # a module-level function (pickled by reference onto the workers)
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    name: str = ""  # what the job does, for messages
    num_cpus: float = 1  # CPU cores the job uses
    memory: int = 0  # bytes of RAM the job needs at most (0: not declared)
    timing: bool = False  # measures latency: runs alone on its host (TIMING_RESOURCE)
    parallel: bool = False  # about one core busy: in-process, may run beside others on worker processes


@dataclass(frozen=True)
class Failed:
    """A job that raised an EdgepackError: its one-line message."""

    message: str


@dataclass(frozen=True)
class Done:
    """What `call` returns around a job's value: where and how long it ran."""

    value: Any
    host: str  # node name the job ran on
    seconds: float  # wall time of the job itself


def call(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Done | Failed:
    """Run one job (in this process or inside a Ray task)."""
    t0 = time.time()
    try:
        value = fn(*args, **kwargs)
    except EdgepackError as e:
        return Failed(str(e))
    return Done(value, platform.node(), time.time() - t0)


def resolve(ray_address: str | None) -> str | None:
    """The Ray address to use: the one given, else $EDGEPACK_RAY_ADDRESS; None or "" = in-process."""
    address = ray_address if ray_address is not None else os.environ.get(ENV_VAR)
    return address or None


def executor(ray_address: str | None = None, workers: int = 1) -> InProcess | RayExecutor:
    """The executor for `ray_address` (see resolve); use it as a context manager. `workers`: worker
    processes for `parallel` jobs when in-process (1: none)."""
    address = resolve(ray_address)
    return InProcess(workers) if address is None else RayExecutor(address)


def local_workers(limit: int = 4) -> int:
    """Worker processes worth starting for single-core jobs here: the cores this process may use, at
    most `limit` (each worker holds its own TensorFlow and data: ~1.5 GB)."""
    return max(1, min(usable_cores(), limit))


@dataclass(frozen=True)
class _Shared:
    """Stands for an object given to `InProcess.share` in a job sent to a worker process."""

    key: int


_WORKER_SHARED: dict[int, Any] = {}  # in a worker process: what the pool was started with
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Fewer parallel jobs than this run in this process: a worker's start (importing TensorFlow, ~5-10 s
# on 2 cores) costs what 2-3 exports do, so a few exports finish sooner here.
MIN_POOLED = 8


def _install_shared(shared: dict[int, Any]) -> None:
    """A worker process's start: the shared objects; on Linux, the worker is killed when the process
    that started it dies (even by SIGKILL), so no job outlives an interrupted run."""
    _WORKER_SHARED.update(shared)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker ends when its queue closes instead
        pass


def _pooled_call(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Done | Failed:
    """`call` in a worker process, with the shared objects put back in place of their stand-ins."""
    def back(v):
        return _WORKER_SHARED[v.key] if isinstance(v, _Shared) else v
    return call(fn, tuple(back(a) for a in args), {k: back(v) for k, v in kwargs.items()})


class InProcess:
    """Jobs one after another in this process (no Ray); `parallel` jobs on `workers` processes."""

    def __init__(self, workers: int = 1, min_pooled: int = MIN_POOLED):
        self.workers = max(1, int(workers))
        self.min_pooled = max(2, int(min_pooled))
        self.where = "in-process" + (f"; exports on {self.workers} worker processes" if self.workers > 1
                                     else "")
        self._shared: dict[int, Any] = {}
        self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def share(self, obj):
        self._shared[id(obj)] = obj
        return obj

    def slots(self) -> int:
        """How many timing jobs can run at once (one per host): in-process, 1."""
        return 1

    def together(self, jobs: list[Job]) -> bool:
        """Whether `jobs` run at the same time (then their outcomes come in any order)."""
        return self.workers > 1 and len(jobs) >= self.min_pooled and all(j.parallel for j in jobs)

    def as_completed(self, jobs: list[Job]) -> Iterator[tuple[int, Done | Failed]]:
        """(index in `jobs`, outcome) of each job as it finishes: in order, one at a time, unless
        `together(jobs)`: then on the worker processes, as each finishes."""
        if self.together(jobs):
            yield from self._pooled(jobs)
            return
        for i, j in enumerate(jobs):
            yield i, call(j.fn, j.args, j.kwargs)

    def _pooled(self, jobs: list[Job]) -> Iterator[tuple[int, Done | Failed]]:
        if self._pool is None:  # spawned, not forked: TensorFlow's threads do not survive a fork
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_install_shared, initargs=(self._shared,))

        def stand_in(v):
            return _Shared(id(v)) if id(v) in self._shared and self._shared[id(v)] is v else v
        futures = {self._pool.submit(_pooled_call, j.fn, tuple(stand_in(a) for a in j.args),
                                     {k: stand_in(v) for k, v in j.kwargs.items()}): i
                   for i, j in enumerate(jobs)}
        try:
            for f in as_completed(futures):
                yield futures[f], f.result()
        except BrokenProcessPool:
            raise EdgepackError(f"a worker process died while running {len(jobs)} jobs (out of memory?): "
                                "run again to resume, with fewer worker processes (pipeline --workers 1)"
                                ) from None
        finally:
            for f in futures:
                f.cancel()

    def run_timed(self, jobs: list[Job]) -> list[Done | Failed]:
        """Every job's outcome with its host and seconds, in the order of `jobs`."""
        out: list = [None] * len(jobs)
        for i, result in self.as_completed(jobs):
            out[i] = result
        return out

    def run(self, jobs: list[Job]) -> list:
        """Every job's return value (or its Failed), in the order of `jobs`."""
        return [r if isinstance(r, Failed) else r.value for r in self.run_timed(jobs)]


class RayExecutor(InProcess):
    """Jobs as Ray tasks, results in order. Connects to `address` ("auto": the running cluster, else a
    new local one on this machine with one TIMING_RESOURCE) unless Ray is already initialised."""

    def __init__(self, address: str):
        self.address = address
        self.started = False  # we called ray.init, so we shut it down
        self.where = f"Ray ({address})"

    def __enter__(self):
        if self.address != "auto":
            check_reachable(self.address)  # before Ray: an address nobody answers at fails in seconds
            for key, value in RAY_CONNECT_ENV.items():
                os.environ.setdefault(key, value)
        ray = _import_ray()
        if not ray.is_initialized():
            self._connect(ray)
            self.started = True
        if not ray.cluster_resources().get(TIMING_RESOURCE):
            self.__exit__()
            raise EdgepackError(f"the Ray cluster at {self.address} offers no {TIMING_RESOURCE} resource, "
                                f"so latency work would wait forever: start every node with ray start "
                                f"--resources '{{\"{TIMING_RESOURCE}\": 1}}'")
        return self

    def _connect(self, ray) -> None:
        quiet = {"include_dashboard": False, "log_to_driver": True, "logging_level": "warning"}
        try:
            if self.address == "auto":
                try:
                    ray.init(address="auto", **quiet)
                except ConnectionError:  # no running cluster: a local one on this machine
                    ray.init(resources={TIMING_RESOURCE: 1}, **quiet)
            else:
                ray.init(address=self.address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as e:
            ray.shutdown()  # whatever a half-made connection left: nothing stays behind
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            within = "" if self.address == "auto" else f" within ~{RAY_CONNECT_SECONDS} s"
            raise EdgepackError(f"--ray {self.address}: cannot connect to a Ray cluster{within} "
                                f"({first[:200]}): start one with `ray start --head` or pass --ray auto"
                                ) from None

    def __exit__(self, *exc) -> None:
        if self.started:
            _import_ray().shutdown()
            self.started = False

    def share(self, obj):
        return _import_ray().put(obj)

    def slots(self) -> int:
        """How many timing jobs can run at once: the cluster's TIMING_RESOURCE units (one per host)."""
        return max(1, int(_import_ray().cluster_resources().get(TIMING_RESOURCE, 1)))

    def together(self, jobs: list[Job]) -> bool:
        return True

    def as_completed(self, jobs: list[Job]) -> Iterator[tuple[int, Done | Failed]]:
        """All jobs at once as Ray tasks; yields each as it finishes, so its caller can record it."""
        ray = _import_ray()
        task = ray.remote(_task)
        refs = []
        for j in jobs:
            opts = {"num_cpus": j.num_cpus, "max_retries": MAX_RETRIES, "retry_exceptions": False,
                    "name": j.name or getattr(j.fn, "__name__", "job")}
            if j.memory:
                opts["memory"] = int(j.memory)
            if j.timing:
                opts["resources"] = {TIMING_RESOURCE: 1}
            refs.append(task.options(**opts).remote(j.fn, j.timing, j.args, j.kwargs))
        index = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            (ref,), pending = ray.wait(pending, num_returns=1)
            i = index[ref]
            try:
                yield i, ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the job raised (not retried): its own error
                raise e.as_instanceof_cause() from None
            except ray.exceptions.RayError as e:  # its worker died more than MAX_RETRIES times
                raise EdgepackError(f"{jobs[i].name or 'a job'} failed on the Ray cluster after "
                                    f"{MAX_RETRIES} retries ({type(e).__name__}: {_first_line(e)})") from None


def host_port(address: str) -> tuple[str, int]:
    """(host, port) of a Ray address "HOST:PORT", "[IPv6]:PORT" or "ray://HOST:PORT" (EdgepackError
    naming the expected form otherwise)."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EdgepackError(f"--ray {address}: expected HOST:PORT (e.g. 10.0.0.5:6379, the head's `ray start "
                            "--head` address) or auto")
    return host, int(port)


def check_reachable(address: str, seconds: float = CONNECT_SECONDS) -> None:
    """Fail in at most `seconds` (one line) unless something accepts a TCP connection at `address`: Ray's
    own connect retries for ~10 minutes. A numeric host is checked without DNS; the check runs in a
    daemon thread, so a slow name lookup cannot outlast it."""
    host, port = host_port(address)
    if host.replace(".", "").isdigit():  # dotted digits: an IPv4 address, or a mistake (256.1.1.1)
        try:
            socket.inet_aton(host)
        except OSError:
            raise EdgepackError(f"--ray {address}: {host} is not a valid IPv4 address: check the address "
                                "`ray start --head` printed") from None
    outcome: list = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=seconds).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e)

    thread = threading.Thread(target=probe, daemon=True, name="edgepack-ray-probe")
    thread.start()
    thread.join(seconds)
    problem = outcome[0] if outcome else TimeoutError("no answer")
    if problem is not None:
        reason = getattr(problem, "strerror", None) or str(problem) or type(problem).__name__
        raise EdgepackError(f"--ray {address}: nothing answers at {host}:{port} within {seconds:g} s "
                            f"({reason}): start the head with `ray start --head`, check the address and "
                            "firewall, or pass --ray auto")


def _task(fn, timing: bool, args: tuple, kwargs: dict) -> Done | Failed:
    """The body of every Ray task. Ray sets OMP_NUM_THREADS to the task's CPUs in its workers; latency
    work measures the host's own thread counts, so it drops that limit (before TensorFlow loads)."""
    import ray

    if timing:
        os.environ.pop("OMP_NUM_THREADS", None)
    args = tuple(ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args)  # share()d objects
    kwargs = {k: ray.get(v) if isinstance(v, ray.ObjectRef) else v for k, v in kwargs.items()}
    return call(fn, args, kwargs)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _import_ray():
    try:
        import ray
    except ModuleNotFoundError:
        raise EdgepackError("--ray needs Ray: pip install 'edgepack[cluster]' (or leave out --ray and "
                            f"${ENV_VAR} to run in-process)") from None
    return ray
