"""edgepack.executor: in-process by default (no Ray import), Ray tasks with retries on a local cluster,
and the pipeline on a local 2-CPU Ray cluster (same rows as in-process; a killed driver resumes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pipeline import SMALL, _pipeline_cmd

from edgepack import atomic, executor
from edgepack.cli import main
from edgepack.errors import EdgepackError, RunFolderError
from edgepack.report.rows import read_results


def _square(x: int) -> int:
    return x * x


def _refuse(x: int) -> int:
    raise RunFolderError(f"bad input {x}: pass another")


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _crash_once(marker: str, value: int) -> tuple[int, int]:
    """Kills its own worker process on the first attempt (a marker file remembers it), then returns."""
    first = not Path(marker).exists()
    Path(marker).write_text("attempted")
    if first:
        os._exit(1)  # like an OOM kill: no exception, the process is gone
    return value, os.getpid()


def _pid_and_sum(data, k: int) -> tuple[int, int]:
    if k == 2:
        raise RunFolderError(f"bad input {k}: pass another")
    time.sleep(0.2)
    return os.getpid(), int(data.sum()) + k


def test_parallel_jobs_run_on_worker_processes_with_the_shared_data_sent_once():
    """In-process with workers: a batch of `parallel` jobs runs on spawned worker processes (not this
    one), each job's shared argument is the object given to share(), an EdgepackError is a Failed
    as in-process, and outcomes come back under their own index. Jobs not all parallel run here."""
    import numpy as np

    few = [executor.Job(_square, (k,), parallel=True) for k in range(executor.MIN_POOLED - 1)]
    assert not executor.executor(None, workers=2).together(few)  # a few jobs: here, no pool to start
    with executor.InProcess(workers=2, min_pooled=2) as ex:
        data = ex.share(np.arange(10))
        jobs = [executor.Job(_pid_and_sum, (data, k), parallel=True) for k in range(5)]
        assert ex.together(jobs) and not ex.together(jobs[:1])
        outcomes = dict(ex.as_completed(jobs))
        assert outcomes[2] == executor.Failed("bad input 2: pass another")
        pids = {outcomes[k].value[0] for k in (0, 1, 3, 4)}
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
        assert [outcomes[k].value[1] for k in (0, 1, 3, 4)] == [45, 46, 48, 49]
        mixed = [*jobs[:2], executor.Job(_square, (3,))]
        assert not ex.together(mixed)
        assert ex.run(mixed)[2] == 9 and ex.run(mixed)[0][0] == os.getpid()
    assert not executor.InProcess(1).together(jobs)


def _say(text: str) -> tuple[str, str | None]:
    print(text, flush=True)
    return text, os.environ.get(executor.WORKER_THREADS_ENV[0])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_job_starts_once_the_jobs_it_needs_are_done_and_not_after_one_failed(workers, capfd):
    """`after`: job 1 needs job 0 (it starts only after 0 finished), 3 needs 2, which fails, so 3 and 4
    (which needs 3) are not run: outcome None, never started. In this process in list order; on worker
    processes side by side, each line a job prints labelled with its name, TensorFlow given its share of
    the cores."""
    jobs = [executor.Job(_nap, (0.5,), name="nap", parallel=True),
            executor.Job(_say, ("after the nap",), name="say", parallel=True),
            executor.Job(_refuse, (2,), name="refuse", parallel=True),
            executor.Job(_square, (3,), name="square 3", parallel=True),
            executor.Job(_square, (4,), name="square 4", parallel=True),
            executor.Job(_say, ("free",), name="free", parallel=True)]
    after = [(), (0,), (), (2,), (3,), ()]
    events, outcomes = [], {}
    with executor.InProcess(workers=workers, min_pooled=2) as ex:
        assert ex.together(jobs) == (workers == 2)
        for i, outcome in ex.as_completed(jobs, after, lambda i: events.append(("start", i))):
            events.append(("end", i))
            outcomes[i] = outcome
    started = [i for what, i in events if what == "start"]
    ended = [i for what, i in events if what == "end"]
    assert sorted(started) == [0, 1, 2, 5] and sorted(ended) == list(range(6))
    assert events.index(("end", 0)) < events.index(("start", 1))
    assert outcomes[3] is None and outcomes[4] is None and ended.index(2) < ended.index(3) < ended.index(4)
    assert outcomes[2] == executor.Failed("bad input 2: pass another")
    assert outcomes[0].value == 0.5 and outcomes[1].value[0] == "after the nap"
    out = capfd.readouterr().out
    if workers == 1:
        assert started == [0, 1, 2, 5] and ended == [0, 1, 2, 3, 4, 5]
        assert "after the nap\n" in out and "[say]" not in out
    else:
        assert "[say] after the nap\n" in out and "[free] free\n" in out
        assert outcomes[5].value[1] == os.environ.get(executor.WORKER_THREADS_ENV[0],
                                                       str(executor.worker_threads(2)))


def test_jobs_that_need_each_other_in_a_cycle_are_refused():
    jobs = [executor.Job(_square, (k,)) for k in range(2)]
    with pytest.raises(EdgepackError, match="form a cycle"):
        list(executor.InProcess().as_completed(jobs, [(1,), (0,)]))


def test_in_process_runs_jobs_in_order_without_importing_ray():
    code = ("import sys; from edgepack.executor import Job, Failed, executor\n"
            "from test_executor import _square, _refuse\n"
            "with executor(None) as ex:\n"
            "    out = ex.run([Job(_square, (3,)), Job(_refuse, (4,)), Job(_square, (5,))])\n"
            "assert out[0] == 9 and out[2] == 25, out\n"
            "assert out[1] == Failed('bad input 4: pass another'), out\n"
            "assert 'ray' not in sys.modules\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                         str(Path(__file__).parent.parent)])}
    env.pop(executor.ENV_VAR, None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_address_comes_from_the_option_else_the_environment(monkeypatch):
    monkeypatch.setenv(executor.ENV_VAR, "head:6379")
    assert executor.resolve(None) == "head:6379" and executor.resolve("auto") == "auto"
    assert isinstance(executor.executor(None), executor.RayExecutor)
    assert executor.resolve("") is None  # an explicit empty address: in-process
    monkeypatch.setenv(executor.ENV_VAR, "")
    assert isinstance(executor.executor(None), executor.InProcess)


def test_without_ray_installed_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ModuleNotFoundError
    with pytest.raises(EdgepackError, match=r"pip install 'edgepack\[cluster\]'"):
        with executor.executor("auto"):
            pass


def test_output_not_seen_by_the_driver_is_an_error(tmp_path):
    """A job that returned but whose output is not here (a node's local disk) is refused in one line."""
    from edgepack.pipeline import Progress, Stages, Work, _Runner

    out = tmp_path / "out"
    stages = Stages(out)
    run = _Runner(executor.InProcess(), stages, Progress({"export-x": 1.0}), None)
    work = Work("export-x", "k", "export x", out / "exports" / "x", lambda p: p.is_dir(),
                executor.Job(_square, (2,)))
    with pytest.raises(EdgepackError, match="--out must be on a filesystem every Ray node sees"):
        run([work])
    assert not stages.done("export-x", "k")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs and one timing slot (~5 s to start); shut down afterwards."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, resources={executor.TIMING_RESOURCE: 1}, include_dashboard=False,
             logging_level="warning")
    # The test functions live in this module, which workers cannot import: send them by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_ray_runs_jobs_in_order_and_reports_edgepack_errors(ray_cluster):
    with executor.executor("auto") as ex:  # already initialised: uses it, leaves it running
        assert isinstance(ex, executor.RayExecutor)
        jobs = [executor.Job(_square, (i,), num_cpus=1, memory=1 << 20) for i in range(4)]
        jobs.append(executor.Job(_refuse, (7,), timing=True))
        assert ex.run(jobs) == [0, 1, 4, 9, executor.Failed("bad input 7: pass another")]
        done = ex.run_timed([executor.Job(_square, (ex.share(6),))])[0]
        assert done.value == 36 and done.host and done.seconds >= 0
        # Each outcome as it finishes (the pipeline marks a stage done as soon as its task returns).
        order = [i for i, _ in ex.as_completed([executor.Job(_nap, (2.0,)), executor.Job(_nap, (0.01,))])]
        assert order == [1, 0]


def test_a_killed_worker_is_retried_with_the_same_result(ray_cluster, tmp_path):
    marker = tmp_path / "attempt"
    with executor.executor("auto") as ex:
        (value, pid), = ex.run([executor.Job(_crash_once, (str(marker), 42))])
    assert value == 42 and pid != os.getpid() and marker.read_text() == "attempted"


def test_a_cluster_without_the_timing_resource_is_refused(ray_cluster, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(EdgepackError, match="ray start --resources '{\"edgepack_timing\": 1}'"):
        with executor.executor("auto"):
            pass
    assert ray.is_initialized()  # not ours to shut down


def _rows(out: Path) -> dict[str, tuple]:
    results = read_results(out / "report" / "results.json")
    return {r.id: (r.status, r.accuracy, r.model_sha256 if r.kind == "file" else None) for r in results.rows}


@pytest.mark.slow
def test_pipeline_on_ray_killed_and_resumed_gives_the_in_process_rows(ray_cluster, tmp_path, tiny_archive,
                                                                         capsys):
    """The same pipeline in-process, then with its stages as Ray tasks and the driver SIGKILLed
    mid-run: the second driver skips every stage marked before the kill and ends with the in-process
    run's rows (one test, so the suite runs the Ray pipeline once)."""
    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL)
    t0 = time.time()
    # In this process on every core, as a Ray task fits: the same float rounding (worker processes,
    # --workers 2, fit on one thread each)
    assert main([*_pipeline_cmd(tiny_archive, tmp_path / "local", cfg)[3:], "--workers", "1"]) == 0
    assert "stages run in-process" in capsys.readouterr().out
    out = tmp_path / "ray"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [*_pipeline_cmd(tiny_archive, out, cfg), "--ray", ray_cluster]
    t1 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(out.glob("stages/compress-*.json")):
        time.sleep(0.05)
    assert proc.poll() is None, "pipeline ended before it could be killed"
    proc.send_signal(signal.SIGKILL)  # the driver dies (mid-stage); Ray cancels its tasks
    proc.wait()
    marked = sorted(p.stem for p in out.glob("stages/*.json"))
    assert "train" in marked and not (out / "report" / "results.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    print(f"wall seconds: in-process {t1 - t0:.1f}, Ray (killed, resumed) {time.time() - t1:.1f}")
    assert f"stages run Ray ({ray_cluster})" in again.stdout and "skip train baseline" in again.stdout
    for stage in marked:  # every stage marked before the kill is skipped, e.g. compress-finetune-...
        name = stage.removeprefix("compress-")
        assert f"skip {'train baseline' if stage == 'train' else 'compress ' + name}" in again.stdout
    assert not list(out.rglob(f"*{atomic.TMP_MARK}*"))
    local, remote = _rows(tmp_path / "local"), _rows(out)
    assert len(local) == 9 and {k: v[:2] for k, v in remote.items()} == {k: v[:2] for k, v in local.items()}
    marker = json.loads((out / "stages" / "compress-prune-0.5.json").read_text())
    assert marker["host"] and marker["seconds"] > 0


@pytest.mark.slow
def test_optimize_trials_on_ray_match_in_process(ray_cluster, tmp_path, tiny_split_run, tiny_archive):
    """~60 s: `optimize --ray` runs each trial as a Ray task (one per timing slot) with the in-process
    trial's figures, and records the host that timed its files."""
    argv = ["optimize", "--model", str(tiny_split_run), "--data", str(tiny_archive), "--max-drop", "100",
            "--objective", "size", "--quick", "--trials", "1"]
    assert main([*argv, "--out", str(tmp_path / "local")]) == 0
    assert main([*argv, "--out", str(tmp_path / "ray"), "--ray", ray_cluster]) == 0

    def trial(out):
        result = json.loads((out / "trials" / "0" / "result.json").read_text())
        return result, [(p["format"], p["accuracy"]) for p in result["points"]], [
            p["gzip_bytes"] for p in result["points"]]

    (local, local_points, local_sizes), (remote, remote_points, remote_sizes) = (
        trial(tmp_path / "local"), trial(tmp_path / "ray"))
    assert local["status"] == remote["status"] == "ok" and remote_points == local_points
    # the files embed their own paths (metadata): sizes differ by those bytes only
    assert remote_sizes == pytest.approx(local_sizes, abs=64)
    assert remote["host"]["node"] and "isa_flags" in remote["host"]


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # a port the kernel just handed out, closed again: nothing listens
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address, message", [
    ("256.1.1.1:1", "256.1.1.1 is not a valid IPv4 address"),
    ("CLOSED", "nothing answers at 127.0.0.1:{port} within 10 s"),
    ("127.0.0.1", "expected HOST:PORT"),
    ("ray://127.0.0.1:99999", "expected HOST:PORT"),
])
@pytest.mark.parametrize("command", ["pipeline", "optimize"])
def test_an_unreachable_ray_address_fails_in_seconds_in_one_line(command, address, message, tmp_path,
                                                                  tiny_archive, tiny_run, capsys):
    """Ray itself retries an unreachable address for ~10 minutes; edgepack checks it first (loopback
    only: no network needed) and leaves nothing behind."""
    port = _closed_port()
    address = f"127.0.0.1:{port}" if address == "CLOSED" else address
    out = tmp_path / "out"
    argv = (["pipeline", "--data", str(tiny_archive), "--quick"] if command == "pipeline" else
            ["optimize", "--model", str(tiny_run), "--data", str(tiny_archive), "--max-drop", "1",
             "--objective", "size"])
    t0 = time.time()
    code = main([*argv, "--out", str(out), "--ray", address])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message.format(port=port) in err[0], err
    assert time.time() - t0 < 15
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_an_address_that_answers_but_is_no_ray_head_fails_within_the_bound(tmp_path):
    """~20 s: a TCP listener (on every interface: Ray turns 127.0.0.1 into this machine's address) that
    never speaks Ray's protocol; Ray's own connect budget (RAY_CONNECT_ENV, read when Ray is imported: a
    fresh process) ends it in one error naming the bound."""
    import socket

    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        code = (f"from edgepack.executor import executor\nwith executor('127.0.0.1:{port}'):\n    pass\n")
        t0 = time.time()
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    seconds = time.time() - t0
    assert r.returncode != 0 and "cannot connect to a Ray cluster within ~20 s" in r.stderr, r.stderr[-2000:]
    assert seconds < executor.RAY_CONNECT_SECONDS + 15, seconds  # + Python, Ray's import and shutdown


def test_ray_addresses_are_parsed_host_and_port():
    assert executor.host_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert executor.host_port("ray://head.local:10001") == ("head.local", 10001)
    assert executor.host_port("[::1]:6379") == ("::1", 6379)
    for bad in ("head", "head:", ":6379", "head:port", "head:0"):
        with pytest.raises(EdgepackError, match="expected HOST:PORT"):
            executor.host_port(bad)
