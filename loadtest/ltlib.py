"""Shared helpers for loadtest/compare and loadtest/regress (python3 stdlib only).

Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

LOADTEST_DIR = Path(__file__).resolve().parent
REPO_ROOT = LOADTEST_DIR.parent
CONF_DIR = LOADTEST_DIR / "conf"

_PREFIX = "loadtest"


def set_prefix(name: str) -> None:
    global _PREFIX
    _PREFIX = name


def log(msg: str) -> None:
    print(f"[{_PREFIX} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Fatal(Exception):
    pass


def die(msg: str) -> "None":
    raise Fatal(msg)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        die(f"{name}={raw!r} is not an integer")
    return default  # unreachable


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        die(f"{name}={raw!r} is not a number")
    return default  # unreachable


def ensure_path() -> None:
    """Make sure ~/.cargo/bin and /usr/sbin are on PATH (nginx/haproxy live in sbin)."""
    extra = [str(Path.home() / ".cargo" / "bin"), "/usr/local/sbin", "/usr/sbin", "/sbin"]
    parts = os.environ.get("PATH", "").split(os.pathsep)
    for p in extra:
        if p not in parts:
            parts.append(p)
    os.environ["PATH"] = os.pathsep.join(parts)


def raise_nofile() -> None:
    """Raise the soft open-files limit to the hard one (inherited by everything started)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 1048576:
        hard = 1048576
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def run(argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), **kw)


def apt_install(packages: List[str]) -> None:
    if not packages:
        return
    if os.geteuid() != 0:
        die(f"missing {' '.join(packages)}; install them (apt-get install {' '.join(packages)}) or run as root")
    if not have("apt-get"):
        die(f"missing {' '.join(packages)} and no apt-get to install them")
    log(f"installing with apt-get: {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = run(["apt-get", "install", "-y", "--no-install-recommends", *packages], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        log("apt-get install failed; trying apt-get update first")
        run(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = run(["apt-get", "install", "-y", "--no-install-recommends", *packages], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            sys.stderr.write(r.stdout[-3000:])
            die(f"apt-get install {' '.join(packages)} failed")


def git_short_commit() -> str:
    r = run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return "nocommit"
    commit = r.stdout.strip()
    d = run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if d.returncode == 0 and d.stdout.strip():
        commit += "-dirty"
    return commit


def cargo_build_release(example: Optional[str] = None) -> Path:
    """Builds the ringgate binary (or, with `example`, that example) in release mode."""
    if not have("cargo"):
        die("cargo not found (install Rust via rustup; ~/.cargo/bin is searched)")
    what = ["--example", example] if example else ["--bin", "ringgate"]
    log(f"cargo build --release {' '.join(what)}")
    r = run(["cargo", "build", "--release", *what], cwd=REPO_ROOT)
    if r.returncode != 0:
        die("cargo build --release failed (see the compiler output above)")
    target_dir = os.environ.get("CARGO_TARGET_DIR")
    base = Path(target_dir) if target_dir else REPO_ROOT / "target"
    if not base.is_absolute():
        base = REPO_ROOT / base
    binary = base / "release" / "examples" / example if example else base / "release" / "ringgate"
    if not binary.is_file():
        die(f"build succeeded but {binary} is missing")
    return binary


# --------------------------------------------------------------------------
# ports


def port_free(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(1)
        return True
    except OSError:
        return False
    finally:
        s.close()


def require_ports_free(ports: Dict[str, int]) -> None:
    busy = [f"{name}={port}" for name, port in ports.items() if not port_free(port)]
    if busy:
        die("ports already in use on 127.0.0.1: " + ", ".join(busy)
            + " (stop whatever holds them, or set PORT_BASE to move the whole block)")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def port_listening(port: int) -> bool:
    """True when a socket listens on 127.0.0.1:port or 0.0.0.0:port (per /proc/net/tcp)."""
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return port_open(port)
    for line in lines:
        cols = line.split()
        if len(cols) > 3 and cols[1] in wanted and cols[3] == "0A":
            return True
    return False


# --------------------------------------------------------------------------
# templates


def render(template: Path, out: Path, values: Dict[str, str]) -> Path:
    text = template.read_text()
    for key, val in values.items():
        text = text.replace(f"@@{key}@@", str(val))
    left = re.search(r"@@[A-Z0-9_]+@@", text)
    if left:
        die(f"{template}: unfilled placeholder {left.group(0)}")
    out.write_text(text)
    return out


# --------------------------------------------------------------------------
# processes


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen, logfile: Path):
        self.name = name
        self.popen = popen
        self.logfile = logfile

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


class ProcManager:
    """Starts processes and guarantees they are stopped on exit (atexit + signals).

    Only the processes started here are ever signalled, by their own pid.
    """

    def __init__(self) -> None:
        self.procs: List[Proc] = []
        self._cleaned = False
        atexit.register(self.cleanup)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        log(f"caught signal {signum}; cleaning up")
        self.cleanup()
        sys.exit(128 + signum)

    def start(self, name: str, argv: Sequence[str], logfile: Path, cpu: Optional[str] = None,
              cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None) -> Proc:
        argv = list(argv)
        if cpu is not None:
            argv = ["taskset", "-c", cpu, *argv]
        log(f"start {name}: {' '.join(argv)}")
        fh = open(logfile, "ab")
        popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 cwd=str(cwd) if cwd else None, env=env, start_new_session=True)
        fh.close()
        proc = Proc(name, popen, logfile)
        self.procs.append(proc)
        return proc

    def wait_port(self, proc: Proc, port: int, timeout: float = 30.0, probe: str = "connect") -> None:
        """Wait until 127.0.0.1:port accepts connections.  probe="listen" only looks at
        /proc/net/tcp and never connects, so the server sees no extra connection (regress)."""
        check = port_open if probe == "connect" else port_listening
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                die(f"{proc.name} exited with status {proc.popen.returncode} before listening on "
                    f"127.0.0.1:{port}; log tail:\n{proc.log_tail()}")
            if check(port):
                return
            time.sleep(0.05)
        die(f"{proc.name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s; log tail:\n"
            f"{proc.log_tail()}")

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, timeout: float = 10.0) -> Optional[int]:
        """Signal one process and wait; SIGKILL after `timeout`. Returns its exit status."""
        if proc.alive():
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{proc.name} (pid {proc.pid}) ignored signal {sig} for {timeout:.0f}s; SIGKILL")
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.popen.wait(timeout=10)
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.popen.returncode

    def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc, timeout=5.0)
            except Exception as exc:  # keep going: stop everything else
                log(f"could not stop {proc.name} (pid {proc.pid}): {exc}")


# --------------------------------------------------------------------------
# CPU accounting


def _stat_fields(pid: int) -> Optional[List[str]]:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces/parens: split after the last ')'.
    rest = raw[raw.rindex(")") + 2:].split()
    return rest  # rest[0] is field 3 (state); field N is rest[N - 3]


def descendants(pid: int) -> List[int]:
    """pid and all its live descendants (by scanning /proc for ppid)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime (fields 14, 15 of /proc/PID/stat; a process's line already sums its
    threads) of pid and every live descendant (nginx workers etc.)."""
    ticks = 0
    for p in descendants(pid):
        fields = _stat_fields(p)
        if fields is None:
            continue
        ticks += int(fields[14 - 3]) + int(fields[15 - 3])
    return ticks / CLK_TCK


def _cpu_jiffies() -> Optional[tuple]:
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    vals = [int(x) for x in first[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals), idle


def machine_busy_percent(interval: float = 1.0) -> Optional[float]:
    """Share of all CPUs busy over `interval` seconds (other people's builds, benchmarks...)."""
    a = _cpu_jiffies()
    time.sleep(interval)
    b = _cpu_jiffies()
    if a is None or b is None or b[0] == a[0]:
        return None
    return 100.0 * (1.0 - (b[1] - a[1]) / (b[0] - a[0]))


class ForeignCpuMeter:
    """CPU used on the machine, during a run, by anything that is not ours: total busy time
    from /proc/stat minus the CPU of our server process trees and of our finished (waited-for)
    children, such as the load generator.  Reported as a share of all CPUs."""

    def __init__(self, pids: List[int]):
        self.pids = pids
        self._a = None

    def _snap(self):
        import resource
        jiffies = _cpu_jiffies()
        ours = sum(tree_cpu_seconds(p) for p in self.pids)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.monotonic(), jiffies, ours + ru.ru_utime + ru.ru_stime

    def start(self) -> None:
        self._a = self._snap()

    def stop(self) -> Optional[float]:
        b = self._snap()
        a = self._a
        if a is None or a[1] is None or b[1] is None or b[0] <= a[0]:
            return None
        busy = ((b[1][0] - b[1][1]) - (a[1][0] - a[1][1])) / CLK_TCK
        foreign = busy - (b[2] - a[2])
        return max(0.0, 100.0 * foreign / ((b[0] - a[0]) * (os.cpu_count() or 1)))


def median(values: List[float]) -> float:
    vals = sorted(values)
    n = len(vals)
    if n == 0:
        return float("nan")
    mid = n // 2
    return vals[mid] if n % 2 else (vals[mid - 1] + vals[mid]) / 2.0
