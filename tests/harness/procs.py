"""Child processes with their output in a log file, and what /proc tells
about them. Nothing here sleeps for readiness: callers poll a condition
(a ready file, a listening port) with `wait_for`, which fails early when the
process dies."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

# Every process started and not yet stopped, for cleanup at exit.
PROCS: list["Proc"] = []


class Proc:
    """A child process whose stdout+stderr go to `log_path`."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None, append: bool = False):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab" if append else "wb")
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.pid = self.popen.pid
        PROCS.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 80) -> str:
        """The last lines of the log, without terminal colours."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<cannot read {self.log_path}: {e}>"
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10) -> tuple[int, bool]:
        """SIGTERM, wait, then SIGKILL. Returns (returncode, needed_kill)."""
        killed = False
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
                killed = True
        self._log.close()
        if self in PROCS:
            PROCS.remove(self)
        return self.popen.returncode, killed


def kill_all() -> None:
    """SIGKILL whatever is still running (for atexit)."""
    for p in list(PROCS):
        if p.alive():
            p.popen.kill()


def stop_all(timeout: float = 5) -> None:
    """Stop everything still running, gracefully first (for atexit)."""
    for p in list(PROCS):
        try:
            p.stop(timeout)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def wait_for(pred: Callable[[], object], what: str, proc: Proc, timeout: float = 30) -> object:
    """Poll `pred` until it returns something truthy; fail early if `proc` dies."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}\n"
                f"argv: {proc.argv}\nlog:\n{proc.tail()}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}\nlog:\n{proc.tail()}")
        time.sleep(0.02)


def read_ready_file(path: Path):
    """The JSON an s3gate process writes to its --ready-file once it listens
    (`{"s3": "host:port"}`, plus `"grpc"` for a control plane), or None while
    there is none."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def ready_field(path: Path, field: str) -> Callable[[], object]:
    """A `wait_for` condition: `field` of the ready file at `path`, or None."""
    return lambda: (read_ready_file(path) or {}).get(field)


def start_with_ready_file(
    name: str, argv: list[str], ready: Path, field: str, log_path: Path,
    env: dict[str, str] | None = None, append: bool = False, timeout: float = 30,
) -> tuple[Proc, str]:
    """Starts `argv` (which passes `--ready-file ready`) after removing any old
    ready file, and waits for its address `field` there. The address must be
    on 127.0.0.1. Returns the process and the address; a process that does
    not get ready is stopped."""
    ready.unlink(missing_ok=True)
    proc = Proc(name, argv, log_path, env, append=append)
    try:
        addr = wait_for(ready_field(ready, field), f"{name} ready file {ready}", proc, timeout)
        if not addr.startswith("127.0.0.1:"):
            raise RuntimeError(f"{name} bound {addr}, expected 127.0.0.1")
    except BaseException:
        proc.stop()
        raise
    return proc, addr


def listening_ports(pid: int) -> list[int]:
    """TCP ports that process `pid` is listening on, from /proc."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return []
    return [int(f[1].rsplit(":", 1)[1], 16) for f in tcp_sockets() if f[3] == "0A" and f[9] in inodes]


def tcp_sockets():
    """The rows of /proc/net/tcp and tcp6, split into fields: [1] local
    address, [2] remote address (hex `addr:port`), [3] state (0A listening,
    01 established), [9] inode."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            yield row.split()


def free_port() -> int:
    """A port nothing listens on right now (only where a fixed port is
    unavoidable: everything s3gate starts binds port 0 and reports it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM, …), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_kib(pid: int) -> int:
    peak = status_kib(pid, "VmHWM")
    if peak is None:
        raise AssertionError(f"no VmHWM in /proc/{pid}/status")
    return peak
