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

Jobs may wait for others: `as_completed(jobs, after)` starts job i once every job in after[i] is done
(a job whose need failed is not run), e.g. a fine-tuning after its source's, an export after its model.
In-process, jobs run one after another in list order, exactly as if called directly; with
`workers` > 1, a batch of at least MIN_POOLED jobs all marked `parallel` (work that keeps about one
core busy: fine-tunings, exports) runs on that many spawned worker processes instead, the first ready
in list order first, each worker holding one copy of what `share` was given (sent once, when the pool
starts) and running TensorFlow on its share of the cores (WORKER_THREADS_ENV). On Ray, every
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
import io
import multiprocessing
import os
import platform
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
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
    parallel: bool = False  # may run beside others, on worker processes with their share of the cores


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
# A worker process's TensorFlow threads (read when TensorFlow starts; a value the user set is kept):
# the cores divided among the workers. Two fits of the tutorial CNN side by side on one thread each
# made 1.56x the steps per second of one fit on both cores (2 cores, measured); the thread count
# changes the float rounding, so their weights differ slightly from a fit on every core.
WORKER_THREADS_ENV = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def worker_threads(workers: int) -> int:
    """TensorFlow threads of each of `workers` worker processes: the usable cores shared out."""
    return max(1, usable_cores() // max(1, workers))


def _install_shared(shared: dict[int, Any], threads: int) -> None:
    """A worker process's start: the shared objects and its TensorFlow threads; on Linux, the worker is
    killed when the process that started it dies (even by SIGKILL), so no job outlives an interrupted
    run."""
    _WORKER_SHARED.update(shared)
    for var in WORKER_THREADS_ENV:
        os.environ.setdefault(var, str(threads))
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker ends when its queue closes instead
        pass


class _Labelled(io.TextIOBase):
    """A worker's stdout while it runs a job: each line starts with the job's name, so the lines of
    jobs running side by side can be told apart; never a terminal (progress bars become lines)."""

    def __init__(self, out, label: str):
        self.out, self.label, self.part = out, label, ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        lines = (self.part + text).split("\n")
        self.part = lines.pop()
        if lines:
            self.out.write("".join(f"[{self.label}] {line}\n" for line in lines))
            self.out.flush()
        return len(text)

    def flush(self) -> None:
        if self.part:
            self.write("\n")
        self.out.flush()


def _pooled_call(fn: Callable[..., Any], args: tuple, kwargs: dict, label: str) -> Done | Failed:
    """`call` in a worker process, with the shared objects put back in place of their stand-ins and its
    printed lines labelled."""
    def back(v):
        return _WORKER_SHARED[v.key] if isinstance(v, _Shared) else v
    out, sys.stdout = sys.stdout, _Labelled(sys.stdout, label)
    try:
        return call(fn, tuple(back(a) for a in args), {k: back(v) for k, v in kwargs.items()})
    finally:
        sys.stdout.flush()
        sys.stdout = out


def _scheduled(jobs: list[Job], after: list[tuple[int, ...]] | None, capacity: int,
               start: Callable[[int], None], next_done: Callable[[], tuple[int, Done | Failed]],
               on_start: Callable[[int], None] | None) -> Iterator[tuple[int, Done | Failed | None]]:
    """Runs `jobs` with at most `capacity` at once: job i starts (`start(i)`) when every job in after[i]
    is Done, the first ready in list order first; `next_done()` waits for a started job to finish.
    Yields (i, outcome) as each finishes, and (i, None) for a job not run because one it needs failed."""
    after = after or [()] * len(jobs)
    state: dict[int, bool] = {}  # finished jobs: Done or not
    waiting, running = list(range(len(jobs))), 0
    while waiting or running:
        for i in list(waiting):
            if any(state.get(d) is False for d in after[i]):
                waiting.remove(i)
                state[i] = False
                yield i, None
            elif running < capacity and all(state.get(d) for d in after[i]):
                waiting.remove(i)
                if on_start:
                    on_start(i)
                start(i)
                running += 1
        if not running:
            if waiting:
                raise EdgepackError(f"jobs {waiting} wait for each other: their needs form a cycle")
            return
        i, outcome = next_done()
        running -= 1
        state[i] = isinstance(outcome, Done)
        yield i, outcome


class InProcess:
    """Jobs one after another in this process (no Ray); `parallel` jobs on `workers` processes."""

    def __init__(self, workers: int = 1, min_pooled: int = MIN_POOLED):
        self.workers = max(1, int(workers))
        self.min_pooled = max(2, int(min_pooled))
        self.threads = worker_threads(self.workers)
        self.where = "in-process" + (f"; stages that can run side by side on {self.workers} worker processes "
                                     f"({self.threads} TensorFlow thread{'s' * (self.threads > 1)} each)"
                                     if self.workers > 1 else "")
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
        """Whether `jobs` run side by side (then their outcomes come in any order)."""
        return self.workers > 1 and len(jobs) >= self.min_pooled and all(j.parallel for j in jobs)

    def as_completed(self, jobs: list[Job], after: list[tuple[int, ...]] | None = None,
                     on_start: Callable[[int], None] | None = None
                     ) -> Iterator[tuple[int, Done | Failed | None]]:
        """(index in `jobs`, outcome) of each job as it finishes. `after[i]`: the indices of the jobs job i
        needs: it starts once they are all Done, and is not run (outcome None) if one failed; list the
        most urgent first. `on_start(i)` is called as job i starts. In this process one at a time in
        list order, unless `together(jobs)`: then up to `workers` at once on the worker processes."""
        if self.together(jobs):
            yield from self._pooled(jobs, after, on_start)
            return
        finished: list[tuple[int, Done | Failed]] = []

        def start(i: int) -> None:
            finished.append((i, call(jobs[i].fn, jobs[i].args, jobs[i].kwargs)))

        yield from _scheduled(jobs, after, 1, start, finished.pop, on_start)

    def _pooled(self, jobs: list[Job], after, on_start) -> Iterator[tuple[int, Done | Failed | None]]:
        if self._pool is None:  # spawned, not forked: TensorFlow's threads do not survive a fork
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_install_shared,
                                             initargs=(self._shared, self.threads))

        def stand_in(v):
            return _Shared(id(v)) if id(v) in self._shared and self._shared[id(v)] is v else v
        futures: dict = {}

        def start(i: int) -> None:
            j = jobs[i]
            futures[self._pool.submit(_pooled_call, j.fn, tuple(stand_in(a) for a in j.args),
                                      {k: stand_in(v) for k, v in j.kwargs.items()},
                                      j.name or getattr(j.fn, "__name__", "job"))] = i

        def next_done() -> tuple[int, Done | Failed]:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            f = next(iter(done))
            return futures.pop(f), f.result()

        try:
            yield from _scheduled(jobs, after, self.workers, start, next_done, on_start)
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

    def as_completed(self, jobs: list[Job], after: list[tuple[int, ...]] | None = None,
                     on_start: Callable[[int], None] | None = None
                     ) -> Iterator[tuple[int, Done | Failed | None]]:
        """Every job as a Ray task as soon as the jobs it needs are done (see InProcess.as_completed);
        yields each as it finishes, so its caller can record it."""
        ray = _import_ray()
        task = ray.remote(_task)
        refs: dict = {}

        def start(i: int) -> None:
            j = jobs[i]
            opts = {"num_cpus": j.num_cpus, "max_retries": MAX_RETRIES, "retry_exceptions": False,
                    "name": j.name or getattr(j.fn, "__name__", "job")}
            if j.memory:
                opts["memory"] = int(j.memory)
            if j.timing:
                opts["resources"] = {TIMING_RESOURCE: 1}
            refs[task.options(**opts).remote(j.fn, j.timing, j.args, j.kwargs)] = i

        def next_done() -> tuple[int, Done | Failed]:
            (ref,), _ = ray.wait(list(refs), num_returns=1)
            i = refs.pop(ref)
            try:
                return i, ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the job raised (not retried): its own error
                raise e.as_instanceof_cause() from None
            except ray.exceptions.RayError as e:  # its worker died more than MAX_RETRIES times
                raise EdgepackError(f"{jobs[i].name or 'a job'} failed on the Ray cluster after "
                                    f"{MAX_RETRIES} retries ({type(e).__name__}: {_first_line(e)})") from None

        yield from _scheduled(jobs, after, len(jobs), start, next_done, on_start)


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
