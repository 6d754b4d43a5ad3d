"""README command 1 as a newcomer runs it: `bash scripts/quickstart.sh` in a
clean HOME with a fresh state dir, then the commands it prints, run as
printed (blocks of shell, pasted whole): the aws cli from the venv it
installed, the boto3 snippet, curl on the presigned URLs, the `rb` it warns
about (refused: the bucket survives), the Admin CLI. Stopped with SIGINT it
must leave no process behind; run again it must reuse its keys, admin token
and venv.

The script is given the binary the suite tests (S3GATE_BIN, so it does not
build) and port 0 for everything (so it collides with nothing, such as a
quickstart of the user's). The first run installs its venv from PyPI (about a
minute); the second run reuses it and is up in seconds."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, gateway_bin

SCRIPT = REPO / "scripts" / "quickstart.sh"
READY_LINE = "Press Ctrl-C to stop s3gate and s3s-fs."
COLD_TIMEOUT = 900  # the first run installs the aws cli and boto3 from PyPI
WARM_TIMEOUT = 120


def user_env(home: Path) -> dict[str, str]:
    """A shell of a user with a fresh HOME: the machine's environment (PATH,
    pip and pyenv settings) without any AWS or s3gate settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3GATE_"))}
    env["HOME"] = str(home)
    return env


def process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, state, cmdline) for every process."""
    table = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        table[int(d.name)] = (int(fields[1]), fields[0], cmd)
    return table


def descendants(pid: int) -> dict[int, str]:
    table = process_table()
    out, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _, cmd) in table.items():
            if ppid == parent and child not in out:
                out[child] = cmd
                todo.append(child)
    return out


def left_behind(state: Path, pids: dict[int, str]) -> list[str]:
    """Processes still there: any of `pids`, or any whose command line names the state dir."""
    table = process_table()
    return [f"{p} [{table[p][1]}] {table[p][2]}" for p in table if p in pids or str(state) in table[p][2]]


def listening(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, int(port))) == 0


class Quickstart:
    """One run of the script, in its own session (so a group SIGINT reaches
    it and its children as Ctrl-C in a terminal would), output in a file."""

    def __init__(self, env: dict[str, str], log: Path):
        self.log = log
        self._out = open(log, "wb")
        self.popen = subprocess.Popen(
            ["bash", str(SCRIPT)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
            # As from a terminal: SIGINT acts. (A test run started in the
            # background by a shell without job control inherits SIGINT
            # ignored, and a shell cannot trap a signal ignored on entry.)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            out = self.output()
            if READY_LINE in out:
                return out
            if self.popen.poll() is not None:
                pytest.fail(f"quickstart exited with {self.popen.returncode} before printing its examples:\n{out}")
            if time.monotonic() > deadline:
                pytest.fail(f"quickstart printed no examples within {timeout}s:\n{out}")
            time.sleep(0.2)

    def stop(self, sig_to_group: bool) -> int:
        if sig_to_group:
            os.killpg(self.popen.pid, signal.SIGINT)  # Ctrl-C in a terminal
        else:
            os.kill(self.popen.pid, signal.SIGINT)  # kill -INT <script>
        try:
            return self.popen.wait(30)
        finally:
            self._out.close()

    def kill(self) -> None:
        """Cleanup after a failure: the whole group, hard."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait()
        self._out.close()


def blocks(out: str) -> dict[int, str]:
    """The numbered blocks of shell the script prints ("# 1. ...", "# 2. ...")."""
    text = out.split("Try these in another terminal", 1)[1].split("\nConfig: ", 1)[0]
    parts = re.split(r"^# (\d+)\. .*$", text, flags=re.M)
    return {int(parts[i]): parts[i + 1].strip("\n") + "\n" for i in range(1, len(parts), 2)}


def exports(block: str) -> str:
    return "".join(line + "\n" for line in block.splitlines() if line.startswith(("export ", "unset ")))


def sh(script: str, env: dict[str, str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Runs pasted lines as a user's bash would, but stops at the first failure."""
    r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=180)
    if check and r.returncode != 0:
        pytest.fail(f"exit {r.returncode} from:\n{script}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def printed(out: str, name: str) -> str:
    m = re.search(rf"^export {name}=(\S+)", out, re.M)
    assert m, f"no `export {name}=` in the quickstart's output:\n{out}"
    return m.group(1)


def test_quickstart_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_quickstart_as_the_readme_says(tmp_path):
    if shutil.which("s3s-fs") is None:
        pytest.fail("s3s-fs is not on PATH: cargo install s3s-fs --version 0.14.1 --features binary --locked")
    if shutil.which("curl") is None:
        pytest.fail("curl is not on PATH (apt-get install curl; .ci/run installs it)")
    home, work, state = tmp_path / "home", tmp_path / "work", tmp_path / "state" / ".quickstart"
    home.mkdir()
    work.mkdir()
    env = user_env(home)
    qs_env = {
        **env,
        "S3GATE_QUICKSTART_DIR": str(state),
        "S3GATE_QUICKSTART_PORT": "0",
        "S3GATE_QUICKSTART_ADMIN_PORT": "0",
        "S3GATE_QUICKSTART_BACKEND_PORT": "0",
        "S3GATE_BIN": str(gateway_bin()),
    }
    runs: list[Quickstart] = []
    try:
        # ------------------------------------------------------------ first run: cold
        t0 = time.monotonic()
        qs = Quickstart(qs_env, tmp_path / "run1.log")
        runs.append(qs)
        out = qs.wait_ready(COLD_TIMEOUT)
        cold = time.monotonic() - t0
        b = blocks(out)
        assert sorted(b) == [1, 2, 3, 4, 5], f"unexpected blocks {sorted(b)} in:\n{out}"
        assert "Keys: new" in out
        token = (state / "admin-token").read_text().strip()
        assert token in out, "the new admin token is printed once"
        venv_aws = state / "venv" / "bin" / "aws"
        assert str(venv_aws) in b[1], "the examples use the aws cli the quickstart installed"
        access_key = printed(out, "AWS_ACCESS_KEY_ID")

        # 1. aws cli: cp, ls, cp to stdout
        r = sh(b[1], env, work)
        assert r.stdout.endswith("hello\n"), r.stdout
        assert "hello.txt" in r.stdout and "welcome.txt" in r.stdout

        # 2. boto3: put, list, and a presigned URL that curl can fetch
        r = sh(b[2], env, work)
        assert re.search(r"^boto3\.txt 17$", r.stdout, re.M), r.stdout
        url = r.stdout.strip().splitlines()[-1]
        assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url, url
        fetched = subprocess.run(["curl", "-sS", "--fail-with-body", url], capture_output=True, text=True, timeout=60)
        assert fetched.returncode == 0 and fetched.stdout == "hello from boto3\n", fetched

        # 3. presigned URLs with curl: the one printed, and a fresh one
        welcome = (state / "welcome.txt").read_text()
        r = sh(exports(b[1]) + b[3], env, work)
        assert r.stdout == welcome * 2, r.stdout

        # 4. rb --force: objects go, the bucket stays
        rb = [line.lstrip("# ").strip() for line in b[4].splitlines() if " rb s3://demo" in line]
        assert len(rb) == 1, b[4]
        r = sh(exports(b[1]) + rb[0], env, work, check=False)
        assert r.returncode != 0, f"rb succeeded:\n{r.stdout}{r.stderr}"
        assert "AccessDenied" in r.stderr and "DeleteBucket" in r.stderr, r.stderr
        assert "delete: s3://demo/hello.txt" in r.stdout, r.stdout
        r = sh(exports(b[1]) + f"{venv_aws} --endpoint-url {printed_endpoint(b[1])} s3api head-bucket --bucket demo", env, work)
        assert (state / "data" / "demo").is_dir()
        assert list((state / "data" / "demo").iterdir()) == []

        # 5. the Admin API through `s3gate admin`
        r = sh(b[5], env, work)
        assert access_key in r.stdout, r.stdout
        assert re.search(r"^DENY .* for principal demo-user \(identity: key\)$", r.stdout, re.M), r.stdout

        # Ctrl-C sent to the script alone (kill -INT): both servers stop, nothing is left
        kids = descendants(qs.popen.pid)
        assert any("s3s-fs" in c for c in kids.values()) and any(" serve " in c for c in kids.values()), kids
        s3_addr = re.search(r"S3 on http://(\S+) ", out).group(1)
        code = qs.stop(sig_to_group=False)
        assert code == 130, f"exit {code}:\n{qs.output()}"
        assert "==> stopped" in qs.output()
        assert left_behind(state, kids) == []
        assert not listening(s3_addr)

        # ------------------------------------------------------------ second run: warm
        t0 = time.monotonic()
        qs = Quickstart(qs_env, tmp_path / "run2.log")
        runs.append(qs)
        out2 = qs.wait_ready(WARM_TIMEOUT)
        warm = time.monotonic() - t0
        assert "Keys: the same as last time" in out2
        assert "aws cli and boto3: reusing" in out2
        assert printed(out2, "AWS_ACCESS_KEY_ID") == access_key
        assert printed(out2, "AWS_SECRET_ACCESS_KEY") == printed(out, "AWS_SECRET_ACCESS_KEY")
        assert token not in out2, "the admin token is printed only when it is made"
        assert (state / "admin-token").read_text().strip() == token
        b2 = blocks(out2)
        r = sh(b2[1], env, work)
        assert r.stdout.endswith("hello\n"), r.stdout
        r = sh(b2[5], env, work)
        assert access_key in r.stdout, r.stdout

        # Ctrl-C in a terminal: SIGINT to the whole process group
        kids = descendants(qs.popen.pid)
        code = qs.stop(sig_to_group=True)
        assert code == 130, f"exit {code}:\n{qs.output()}"
        assert left_behind(state, kids) == []
        print(f"quickstart: first run (venv from PyPI) ready in {cold:.1f}s, second run in {warm:.1f}s")
    finally:
        for q in runs:
            q.kill()


def printed_endpoint(block: str) -> str:
    m = re.search(r"--endpoint-url (\S+)", block)
    assert m, block
    return m.group(1)
