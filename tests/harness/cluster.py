"""s3gate's distributed mode on 127.0.0.1, as the e2e suite and the benchmark
start it: a private redis-server, `s3gate controlplane` replicas (gRPC) and
`s3gate dataplane` processes asking them. Readiness is a PING answered or an
address in a --ready-file, never a sleep. The config, environment and log
files are the caller's."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from .procs import Proc, free_port, start_with_ready_file, wait_for

MAX_REPLY = 1 << 20  # bytes of one Redis reply read at the most


def resp_command(*args: str) -> bytes:
    """A command in RESP, the Redis protocol: an array of bulk strings."""
    return f"*{len(args)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)


def resp_reply_end(buf: bytes, start: int = 0) -> int | None:
    """Where the RESP reply that begins at `start` of `buf` ends, or None
    while `buf` holds only part of it."""
    eol = buf.find(b"\r\n", start)
    if eol < 0:
        return None
    kind, end = buf[start : start + 1], eol + 2
    if kind == b"$":  # bulk string: length, then the bytes and CRLF (-1: nil)
        n = int(buf[start + 1 : eol])
        return end if n < 0 else (end + n + 2 if len(buf) >= end + n + 2 else None)
    if kind == b"*":  # array: count, then that many replies (-1: nil)
        for _ in range(int(buf[start + 1 : eol])):
            end = resp_reply_end(buf, end)
            if end is None:
                return None
    return end  # simple string, error, integer: one line


class Redis:
    """A private redis-server on 127.0.0.1 with no snapshots; with
    `appendonly`, an append-only file in `dir` keeps the data over a
    restart, as a production Redis would."""

    def __init__(
        self, exe: str, dir: Path, log_path: Path, *, name: str = "redis", appendonly: bool = False,
        loglevel: str | None = None, append_log: bool = False,
    ):
        self.exe, self.dir, self.log_path, self.name = exe, dir, log_path, name
        self.appendonly, self.loglevel, self.append_log = appendonly, loglevel, append_log
        self.port: int | None = None
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/"

    def start(self, attempts: int = 1, timeout: float = 30) -> None:
        """Starts redis-server and waits until it answers PING. The first start
        probes a free port and a restart keeps it (clients know the URL); each
        further attempt, for when another process took the probed port first,
        probes a new one. A server that does not answer is stopped."""
        for attempt in range(attempts):
            if self.port is None or attempt:
                self.port = free_port()
            argv = [self.exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                    "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.dir),
                    "--protected-mode", "yes", "--daemonize", "no"]  # fmt: skip
            if self.loglevel:
                argv += ["--loglevel", self.loglevel]
            self.proc = Proc(self.name, argv, self.log_path, append=self.append_log)
            try:
                wait_for(self.ping, f"{self.name} to answer PING", self.proc, timeout)
                return
            except RuntimeError:
                self.proc.stop()
                if attempt == attempts - 1:
                    raise

    def ping(self) -> bool:
        try:
            return self.call("PING", timeout=0.5).startswith(b"+PONG")
        except OSError:
            return False

    def call(self, *args: str, timeout: float = 2.0) -> bytes:
        """One command on a fresh connection; returns the raw reply, read until
        complete (bounded: at most `timeout` seconds, about MAX_REPLY bytes)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(resp_command(*args))
            buf = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and len(buf) < MAX_REPLY:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if resp_reply_end(buf) is not None:
                    break
            return buf


def gen_master_key(exe: Path, env: dict[str, str] | None = None) -> str:
    """A new master key (what the control plane seals secrets with in Redis)."""
    return subprocess.run(
        [str(exe), "gen-master-key"], check=True, capture_output=True, text=True, timeout=30,
        stdin=subprocess.DEVNULL, env=env,
    ).stdout.strip()  # fmt: skip


def start_controlplane(
    exe: Path, name: str, *, config: Path, ready: Path, log_path: Path, env: dict[str, str],
    redis_url: str | None = None, listen: str = "127.0.0.1:0", replica: str | None = None,
    append_log: bool = False, timeout: float = 30,
) -> tuple[Proc, str]:
    """`s3gate controlplane` seeded from `config`, with its state in Redis at
    `redis_url` (else in memory), named `replica` (`--name`) if given.
    Returns the process and its gRPC address."""
    argv = [str(exe), "controlplane", *(["--redis", redis_url] if redis_url else []), "--config", str(config),
            "--listen", listen, "--ready-file", str(ready), *(["--name", replica] if replica else [])]  # fmt: skip
    return start_with_ready_file(name, argv, ready, "grpc", log_path, env, append_log, timeout)


def start_dataplane(
    exe: Path, name: str, *, control_planes: list[str], region: str, ready: Path, log_path: Path,
    env: dict[str, str], extra_args: list[str] | tuple[str, ...] = (), append_log: bool = False,
    timeout: float = 30,
) -> tuple[Proc, str]:
    """`s3gate dataplane` on 127.0.0.1 asking the control planes whose URLs
    `control_planes` gives (the values after `--control-plane`: several, or
    one comma-separated). Returns the process and its S3 address."""
    argv = [str(exe), "dataplane", "--control-plane", *control_planes, "--listen", "127.0.0.1:0",
            "--ready-file", str(ready), "--region", region, *extra_args]  # fmt: skip
    return start_with_ready_file(name, argv, ready, "s3", log_path, env, append_log, timeout)
