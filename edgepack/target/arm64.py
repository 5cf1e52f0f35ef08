"""The `arm64` target: exported files run on aarch64 builds of ONNX Runtime and LiteRT, emulated.

ONNX Runtime and LiteRT run other int8 kernels on ARM64 (NEON dot product, i8mm, SVE/SME) than on
x86, so a file's accuracy there is proven by running it there. This module builds an aarch64
Python from Debian's packages and PyPI's aarch64 wheels (pinned below) into a cached folder, runs
edgepack.runtime on every file under qemu-user, and compares each file's outputs with the same
file run here: accuracy on both, top-1 agreement and the largest output difference.

Emulation gives the ARM kernels' exact arithmetic, not their speed: no latency is ever reported.
Needs (as root, Linux): qemu-aarch64 (`apt-get install qemu-user`), apt-get and dpkg (Debian or
Ubuntu), unshare (util-linux), and pip for the wheels.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import EdgepackError

NAME = "arm64"
GUEST = Path(__file__).with_name("arm64_guest.py")
PYTHON = "3.11"  # Debian bookworm's python3.11; the wheels below are cp311
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Debian's arm64 packages of a minimal Python with its C libraries (dpkg -x, no chroot).
DEBIAN_PACKAGES = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6",
                   "zlib1g", "libexpat1", "libssl3", "libffi8", "libbz2-1.0", "liblzma5", "libgcc-s1",
                   "libstdc++6")
# PyPI aarch64 wheels. ai-edge-litert 1.4.0 is the last release with aarch64 cp311 wheels.
WHEELS = {"numpy": "2.4.6", "onnxruntime": "1.32.0", "ai-edge-litert": "1.4.0"}
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
ROOT_NAME = f"arm64-py{PYTHON}-{DEBIAN_SUITE}-" + "-".join(f"{k}{v}" for k, v in WHEELS.items())
# What to install for each tool the target needs (one line when it is missing).
TOOLS = {"qemu-aarch64": "apt-get install qemu-user", "unshare": "apt-get install util-linux",
         "apt-get": "a Debian or Ubuntu machine (apt)", "dpkg": "a Debian or Ubuntu machine (dpkg)"}


@dataclass(frozen=True)
class Cpu:
    """One emulated ARM64 CPU: qemu's model and the /proc/cpuinfo text ONNX Runtime's cpuinfo reads."""

    qemu: str  # qemu-aarch64 -cpu NAME
    part: str  # MIDR part number (ARM Ltd, implementer 0x41) cpuinfo uses to name the core
    features: str  # the Features line: the hwcaps qemu 7.2 gives this model
    summary: str  # which devices it stands for and which int8 kernels it selects


CPUS = {
    "max": Cpu("max", "0xd40", "fp asimd aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
               "jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm ilrcpc flagm sb paca "
               "pacg dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm "
               "svef32mm svef64mm svebf16 i8mm bf16 rng bti mte sme",
               "every feature qemu emulates: dot product, i8mm, SVE2, SME (Graviton3/4, recent phones)"),
    "cortex-a76": Cpu("cortex-a76", "0xd0b", "fp asimd aes pmull sha1 sha2 crc32 atomics fphp asimdhp "
                      "cpuid asimdrdm lrcpc dcpop asimddp",
                      "NEON with dot product, no i8mm (Raspberry Pi 5, Graviton2-class cores)"),
    "cortex-a72": Cpu("cortex-a72", "0xd08", "fp asimd aes pmull sha1 sha2 crc32 cpuid",
                      "NEON without dot product (Raspberry Pi 4)"),
}
DEFAULT_CPU = "max"


def default_root() -> Path:
    """~/.cache/edgepack/<ROOT_NAME> (or under $XDG_CACHE_HOME): one folder per pinned version set."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edgepack" / ROOT_NAME


def require_tools(names=tuple(TOOLS)) -> None:
    """One line naming the first missing tool and what to install."""
    for name in names:
        if shutil.which(name) is None:
            raise EdgepackError(f"the arm64 target needs {name}, which is not installed: {TOOLS[name]}")
    if sys.platform != "linux":
        raise EdgepackError("the arm64 target runs on Linux only (qemu-user, unshare)")


def require_keyring() -> None:
    """Debian's archive key, to verify the arm64 packages (Ubuntu hosts lack it by default)."""
    if not DEBIAN_KEYRING.exists():
        raise EdgepackError(f"building the arm64 root needs Debian's archive keyring {DEBIAN_KEYRING}: "
                            "apt-get install debian-archive-keyring")


def cpuinfo_text(cpu: Cpu, count: int) -> str:
    """An aarch64 /proc/cpuinfo with `count` processors. ONNX Runtime's cpuinfo reads /proc/cpuinfo
    at import; under qemu-user it would read the host's x86 file and crash, so the emulated run sees
    this one (its features come from qemu's auxiliary vector either way)."""
    block = ("processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {f}\nCPU implementer\t: 0x41\n"
             "CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: {p}\nCPU revision\t: 1\n\n")
    return "".join(block.format(i=i, f=cpu.features, p=cpu.part) for i in range(max(1, count)))


def get_cpu(name: str) -> Cpu:
    if name not in CPUS:
        raise EdgepackError(f"unknown ARM64 CPU {name!r}: choose one of {', '.join(CPUS)}")
    return CPUS[name]


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    """A build step; its failure is one line with the step and the tool's last output line."""
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise EdgepackError(f"arm64 root: {what} failed ({cmd[0]} exit {done.returncode}: {tail[0][:200]})")
    return done


def _apt_options(work: Path) -> list[str]:
    """apt-get options for a private arm64 package list: the machine's apt state and dpkg's
    architectures are left alone (no `dpkg --add-architecture`, no lock on the system's apt)."""
    (work / "lists" / "partial").mkdir(parents=True)
    (work / "cache" / "archives" / "partial").mkdir(parents=True)
    (work / "parts").mkdir()
    (work / "status").touch()
    signed = f" [signed-by={DEBIAN_KEYRING}]"
    (work / "sources.list").write_text(
        f"deb{signed} {DEBIAN_MIRROR} {DEBIAN_SUITE} main\n"
        f"deb{signed} {DEBIAN_MIRROR} {DEBIAN_SUITE}-updates main\n"
        f"deb{signed} {DEBIAN_SECURITY} {DEBIAN_SUITE}-security main\n")
    return ["-q", "-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
            "-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::Cache={work / 'cache'}",
            "-o", f"Dir::State::status={work / 'status'}",
            "-o", f"Dir::Etc::SourceList={work / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={work / 'parts'}"]


def _debian_python(root: Path, work: Path, progress) -> list[str]:
    """Debian's arm64 Python and C libraries unpacked into `root`; returns the .deb file names."""
    opts = _apt_options(work / "apt")
    progress(f"arm64 root: reading Debian {DEBIAN_SUITE}'s arm64 package lists")
    _run(["apt-get", *opts, "update"], "apt-get update (Debian's arm64 package lists)")
    debs = work / "debs"
    debs.mkdir()
    progress(f"arm64 root: downloading {len(DEBIAN_PACKAGES)} Debian packages")
    _run(["apt-get", *opts, "download", *DEBIAN_PACKAGES], "apt-get download", cwd=debs)
    names = sorted(p.name for p in debs.glob("*.deb"))
    for name in names:
        _run(["dpkg", "-x", str(debs / name), str(root)], f"dpkg -x {name}")
    return names


def _wheels(site: Path, work: Path, progress) -> list[str]:
    """The pinned aarch64 wheels unpacked into `site` (a wheel is a zip of its installed files)."""
    progress(f"arm64 root: downloading {', '.join(f'{k}=={v}' for k, v in WHEELS.items())} (aarch64)")
    platforms = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
          "--python-version", PYTHON, *platforms, "--dest", str(work / "wheels"),
          *(f"{k}=={v}" for k, v in WHEELS.items())], "pip download (aarch64 wheels)")
    names = sorted(p.name for p in (work / "wheels").glob("*.whl"))
    for name in names:
        with zipfile.ZipFile(work / "wheels" / name) as z:
            z.extractall(site)
    for so in site.rglob("*.so*"):  # zip files keep no modes: shared libraries must be readable
        so.chmod(0o755)
    return names


def build_root(root: Path | None = None, progress=print, force: bool = False) -> Path:
    """Build (once) the emulated aarch64 Python in `root` (default_root()), check it and return it.

    Built under a temporary name beside `root` and renamed when its check passed, so a failed or
    interrupted build leaves nothing that looks usable. An existing root is returned as is
    (`force` rebuilds it)."""
    root = Path(root) if root else default_root()
    require_tools()
    if (root / "manifest.json").exists() and not force:
        return root
    require_keyring()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        new, work = tmp / "root", tmp / "work"
        new.mkdir()
        work.mkdir()
        debs = _debian_python(new, work, progress)
        wheels = _wheels(new / "site", work, progress)
        progress("arm64 root: checking it under qemu-aarch64")
        guest = check_root(new)
        (new / "manifest.json").write_text(json.dumps(
            {"name": ROOT_NAME, "debian": debs, "wheels": wheels, "guest": guest}, indent=1))
        if root.exists():
            shutil.rmtree(root)
        new.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def guest_command(root: Path, cpu: Cpu, args: list[str], cpuinfo: Path) -> list[str]:
    """The command that runs the guest script under qemu with `cpuinfo` over /proc/cpuinfo, in a
    mount namespace of its own (the machine's /proc/cpuinfo is untouched). The guest script is the
    copy beside `cpuinfo` (run_guest puts it there)."""
    python = [str(root / "usr" / "bin" / f"python{PYTHON}"), "-s", str(cpuinfo.with_name(GUEST.name)),
              *args]
    unshare = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    return [*unshare, "sh", "-c", 'mount --bind "$0" /proc/cpuinfo && exec "$@"', str(cpuinfo),
            "qemu-aarch64", "-cpu", cpu.qemu, "-L", str(root), *python]


def run_guest(root: Path, args: list[str], cpu: str = DEFAULT_CPU, timeout: float | None = None,
              progress=print) -> str:
    """Run the guest script in the emulated root; its stdout. Its stderr lines that start with
    "arm64:" go to `progress`; a failure is one line with the guest's last stderr line."""
    with tempfile.TemporaryDirectory(prefix="edgepack-arm64-") as tmp:
        pkg = Path(tmp) / "pkg"
        _copy_runtime(pkg)
        cpuinfo = Path(tmp) / "cpuinfo"
        cpuinfo.write_text(cpuinfo_text(get_cpu(cpu), os.cpu_count() or 1))
        shutil.copy(GUEST, Path(tmp) / GUEST.name)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": f"{root / 'site'}:{pkg}",
               "PYTHONNOUSERSITE": "1", "OPENBLAS_NUM_THREADS": "1", "LC_ALL": "C.UTF-8"}
        with tempfile.TemporaryFile("w+") as out, subprocess.Popen(
                guest_command(root, get_cpu(cpu), args, cpuinfo), env=env, text=True, stdout=out,
                stderr=subprocess.PIPE, start_new_session=True) as proc:
            killed = threading.Event()
            # the whole process group: unshare, qemu and the guest (a child left alive would hold stderr)
            timer = threading.Timer(timeout, _kill_group, (proc, killed)) if timeout else None
            if timer:
                timer.start()
            last = ""
            for line in proc.stderr:  # the guest's progress, as it happens
                if line.strip():
                    last = line.strip()
                if line.startswith("arm64:"):
                    progress(last)
            code = proc.wait()
            if timer:
                timer.cancel()
            out.seek(0)
            stdout = out.read()
    if code != 0 and killed.is_set():
        raise EdgepackError(f"the emulated aarch64 run took over {timeout:.0f} s: pass fewer images")
    if code != 0:
        raise EdgepackError(f"the emulated aarch64 Python failed (exit {code}: {last[:200] or 'no output'}); "
                            "if its root is damaged, rebuild it with --rebuild")
    return stdout


def _kill_group(proc: subprocess.Popen, killed: threading.Event) -> None:
    killed.set()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended just now
        pass


def _copy_runtime(pkg: Path) -> None:
    """edgepack's TF-free runtime (and what it imports) alone, for the guest's sys.path: the host's
    site-packages (x86 numpy, TensorFlow) must never be on it."""
    src = Path(__file__).resolve().parents[1]
    dst = pkg / "edgepack"
    shutil.copytree(src / "runtime", dst / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("__init__.py", "errors.py"):
        shutil.copy(src / name, dst / name)


def check_root(root: Path) -> dict:
    """The root's engines import under emulation with the pinned versions; their versions."""
    out = run_guest(root, ["--versions"], timeout=900, progress=lambda s: None)
    try:
        guest = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise EdgepackError(f"the emulated aarch64 Python printed no versions ({out[:100]!r})") from None
    want = {"machine": "aarch64", "numpy": WHEELS["numpy"], "onnxruntime": WHEELS["onnxruntime"],
            "ai_edge_litert": WHEELS["ai-edge-litert"], "tensorflow_loaded": False}
    wrong = {k: guest.get(k) for k, v in want.items() if guest.get(k) != v}
    if wrong:
        raise EdgepackError(f"the emulated aarch64 root is not as pinned: {wrong}; rebuild it")
    return guest
