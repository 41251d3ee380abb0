"""Large rule sets: up to the shim's limit, passed in a file when the environment cannot
hold them, trusted only from their owner, and the same limit in -c, the launcher, env
and the shim."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    Processes,
    free_port,
    preloaded_env,
    read_until,
    require_tool,
    tcp_port_open,
    unixify_command,
    wait_for_socket,
)

# The documented limits (README, "Environment"); the launcher and the shim must agree.
MAX_RULES = 100_000
INLINE_MAX = 64 << 10

# Binds the port it is given on 127.0.0.1, says "ready", greets one client, exits.
SERVER = """\
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
c.sendall(b"hello from %d\\n" % os.getpid())
c.close()
"""

LIMIT_MESSAGE = f"more rules than the limit of {MAX_RULES} ({MAX_RULES + 1} given)"


def rule_file(path: Path, count: int, last: str, port: int, sockdir: Path) -> Path:
    """count rules, last one last; the others never match an inbound connection to
    port, but some sit in its index bucket (outbound) or match any port (wild)."""
    lines = []
    for i in range(count - 1):
        if i % 100 == 0:
            lines.append(f"out,port={port},path={sockdir}/decoy-out.sock")
        elif i % 100 == 1:
            lines.append(f"in,addr=10.{i % 250}.0.0/16,path={sockdir}/decoy-net.sock")
        else:
            decoy = 1024 + i % 30000
            lines.append(f"in,port={decoy if decoy != port else 1023},"
                         f"path={sockdir}/decoy-%p.sock")
    lines.append(last)
    path.write_text("\n".join(lines) + "\n")
    return path


def greeting(sock: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(str(sock))
        return client.recv(100)


def serve_and_greet(proc: subprocess.Popen[str], sock: Path, port: int) -> None:
    read_until(proc, "ready", timeout=60)
    wait_for_socket(sock)
    assert not tcp_port_open(port), "the wrapped server opened its TCP port"
    assert greeting(sock).startswith(b"hello from ")
    assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("count", [1025, 10_000, MAX_RULES])
def test_many_rules_the_last_converts(procs: Processes, sockdir: Path, tmp_path: Path,
                                      count: int) -> None:
    port = free_port()
    rules = rule_file(tmp_path / "rules", count, f"in,port={port},path={sockdir}/%p.sock",
                      port, sockdir)
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    proc = procs.start([*unixify_command(), "-f", str(rules), sys.executable, str(script),
                        str(port)])
    serve_and_greet(proc, sockdir / f"{port}.sock", port)


# Threads that all make their first socket at once, each binding its own port.
THREADED = """\
import socket, sys, threading
ports = [int(p) for p in sys.argv[1:]]
barrier = threading.Barrier(len(ports))
held = []
def listen(port):
    barrier.wait()
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen(1)
    held.append(s)
threads = [threading.Thread(target=listen, args=(p,)) for p in ports]
for t in threads: t.start()
for t in threads: t.join()
print("ready", flush=True)
sys.stdin.read()
"""


def test_threads_load_the_rules_file_together(procs: Processes, sockdir: Path,
                                              tmp_path: Path) -> None:
    """The first socket calls of several threads race to read the rules: one rule set
    wins, every thread's socket is converted by it, and it is announced once."""
    ports = [free_port() for _ in range(8)]
    rules = rule_file(tmp_path / "rules", 20_000, f"in,path={sockdir}/%p.sock", 1, sockdir)
    script = tmp_path / "threaded.py"
    script.write_text(THREADED)
    proc = procs.start([*unixify_command(), "-vvv", "-f", str(rules), sys.executable,
                        str(script), *map(str, ports)], stdin=subprocess.PIPE)
    read_until(proc, "ready", timeout=60)
    for port in ports:
        wait_for_socket(sockdir / f"{port}.sock")
        assert not tcp_port_open(port)
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert proc.stderr is not None
    assert proc.stderr.read().count("20000 rule(s) from") == 1


@pytest.mark.parametrize("how", ["exec", "system"])
def test_descendants_keep_file_rules(procs: Processes, sockdir: Path, tmp_path: Path,
                                     how: str) -> None:
    """A re-executed program and a system() child read the same rules file."""
    port = free_port()
    rules = rule_file(tmp_path / "rules", 2000, f"in,port={port},path={sockdir}/%p.sock",
                      port, sockdir)
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    command = f"{sys.executable} {script} {port}"
    program = (["sh", "-c", f"exec {command}"] if how == "exec" else
               [sys.executable, "-c", f"import os, sys; sys.exit(os.system({command!r}) >> 8)"])
    proc = procs.start([*unixify_command(), "-f", str(rules), *program])
    serve_and_greet(proc, sockdir / f"{port}.sock", port)


def test_systemd_rule_in_a_rules_file(procs: Processes, sockdir: Path,
                                      tmp_path: Path) -> None:
    """The shim holds the passed sockets at load, before it reads the rules file: the
    reference says that a systemd rule is in it."""
    tool = require_tool("systemd-socket-activate")
    passed, own = free_port(), free_port()
    rules = rule_file(tmp_path / "rules", 2000, "in,tcp,systemd", own, sockdir)
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    proc = procs.start([tool, "-l", f"127.0.0.1:{passed}", "--", *unixify_command(), "-f",
                        str(rules), "--", sys.executable, str(script), str(own)])
    deadline = time.monotonic() + 30
    while True:  # the activator listens at once; the greeting needs the program
        try:
            with socket.create_connection(("127.0.0.1", passed), timeout=30) as client:
                data = client.recv(100)
            break
        except ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert data.startswith(b"hello from "), data
    assert not tcp_port_open(own), "the program's own port opened"
    assert proc.wait(timeout=30) == 0


def rules_seen(args: list[str]) -> str:
    """UNIXIFY_RULES as the wrapped program sees it."""
    result = subprocess.run([*unixify_command(), *args, "sh", "-c", 'printf %s "$UNIXIFY_RULES"'],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_small_rule_sets_stay_inline_large_ones_go_to_a_private_file(
        tmp_path: Path, sockdir: Path) -> None:
    assert rules_seen(["-r", f"in,path={sockdir}/x.sock"]).startswith("UFY1{")
    rules = rule_file(tmp_path / "rules", 2000, "in,path=/tmp/x.sock", 1, sockdir)
    reference = rules_seen(["-f", str(rules)])
    assert reference.startswith("@"), reference[:80]
    size, flags, path = reference[1:].split(":", 2)
    assert flags == ""
    info = os.lstat(path)
    assert stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()
    assert stat.S_IMODE(info.st_mode) == 0o644 and info.st_size == int(size) > INLINE_MAX
    folder = os.lstat(os.path.dirname(path))
    assert stat.S_ISDIR(folder.st_mode) and stat.S_IMODE(folder.st_mode) & 0o022 == 0
    assert rules_seen(["-f", str(rules)]) == reference  # the same file, reused


def unixify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*unixify_command(), *args], capture_output=True, text=True,
                          timeout=120)


def test_check_and_launcher_share_the_limit(tmp_path: Path) -> None:
    at_limit = tmp_path / "max"
    at_limit.write_text("in,port=1,path=/tmp/x.sock\n" * MAX_RULES)
    over = tmp_path / "over"
    over.write_text("in,port=1,path=/tmp/x.sock\n" * (MAX_RULES + 1))
    assert unixify("-c", "-f", str(at_limit)).returncode == 0
    for result in (unixify("-c", "-f", str(over)), unixify("-f", str(over), "true"),
                   unixify("env", "-f", str(over))):
        assert result.returncode == 1
        assert LIMIT_MESSAGE in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_env_refuses_what_one_variable_cannot_hold(tmp_path: Path, sockdir: Path) -> None:
    rules = rule_file(tmp_path / "rules", 2000, "in,path=/tmp/x.sock", 1, sockdir)
    result = unixify("env", "-f", str(rules))
    assert result.returncode == 1 and not result.stdout
    assert "more than 65536 for one environment variable" in result.stderr, result.stderr


# ---- the shim's side: a rules file it must refuse ----

ENCODING = b"UFY1{A1:Pd1:iT%d:%s}"


def probe_with(probe: str, reference: str, port: int) -> subprocess.CompletedProcess[str]:
    env = preloaded_env(UNIXIFY_RULES=reference)
    return subprocess.run([probe, "setup", "127.0.0.1", str(port)], env=env,
                          capture_output=True, text=True, timeout=60)


def write_rules(folder: Path, data: bytes) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / "rules"
    path.write_bytes(data)
    path.chmod(0o644)
    return path


def tamper(kind: str, folder: Path, data: bytes) -> Path:
    """A rules file spoiled in one way; "trusted" is the good one."""
    path = write_rules(folder, data)
    if kind == "foreign":
        os.chown(path, 65534, 65534)
    elif kind == "group-writable":
        path.chmod(0o664)
    elif kind == "symlink":
        real = folder / "real"
        path.rename(real)
        path.symlink_to(real)
    elif kind == "foreign-directory":
        os.chown(folder, 65534, 65534)
    elif kind == "fifo":
        path.unlink()
        os.mkfifo(path, 0o644)
    return path


@pytest.mark.parametrize("kind,why", [
    ("trusted", ""), ("foreign", "owned by another user"),
    ("group-writable", "writable by group or others"), ("symlink", "a symbolic link"),
    ("foreign-directory", "owned by another user"), ("fifo", "not a regular file"),
    ("size", "not the size announced")])
def test_shim_trusts_rules_files_only_from_their_owner(probe: str, sockdir: Path,
                                                       tmp_path: Path, kind: str,
                                                       why: str) -> None:
    target = f"{sockdir}/%p.sock".encode()
    data = ENCODING % (len(target), target)
    path = tamper(kind, tmp_path / "private", data)
    size = len(data) + (kind == "size")
    port = free_port()
    result = probe_with(probe, f"@{size}::{path}", port)
    if kind == "trusted":
        assert "bind=0" in result.stdout.splitlines(), result
        assert not result.stderr, result.stderr
        return
    assert "bind=EACCES" in result.stdout.splitlines(), result
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"rules file {path}: {why}; IP bind/connect will fail" in result.stderr


@pytest.mark.parametrize("count,bind", [(MAX_RULES, "bind=0"), (MAX_RULES + 1, "bind=EACCES")])
def test_shim_limit(probe: str, tmp_path: Path, count: int, bind: str) -> None:
    """The shim takes as many rules as the launcher, and refuses more, failing closed."""
    data = b"UFY1" + b"{A1:I}" * count
    path = write_rules(tmp_path / "private", data)
    result = probe_with(probe, f"@{len(data)}::{path}", free_port())
    assert bind in result.stdout.splitlines(), result
    if count > MAX_RULES:
        assert f"rules file {path} is malformed (more rules than the limit of {MAX_RULES}" \
            in result.stderr, result.stderr


def test_rules_file_is_read_only_when_needed(probe: str) -> None:
    """No I/O at load: a program that makes no socket never looks at the rules file."""
    env = preloaded_env(UNIXIFY_RULES="@10::/nonexistent/rules")
    quiet = subprocess.run(["true"], env=env, capture_output=True, text=True, timeout=10)
    assert quiet.returncode == 0 and not quiet.stderr, quiet.stderr
    used = subprocess.run([probe, "setup", "127.0.0.1", "9"], env=env, capture_output=True,
                          text=True, timeout=10)
    assert "bind=EACCES" in used.stdout.splitlines(), used
    assert "rules file /nonexistent/rules: No such file or directory" in used.stderr


# ---- the launcher's side: where it writes a rules file ----

def write_as_nobody(data: bytes) -> str:
    """write_rules_file(data) by uid 65534 without XDG_RUNTIME_DIR: the path, or the
    error's message."""
    from unixify.encoding import LimitError, write_rules_file

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.close(read_end)
        status = 0
        try:
            os.environ.pop("XDG_RUNTIME_DIR", None)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            answer = write_rules_file(data)
        except LimitError as err:
            answer = f"error: {err}"
        except BaseException as err:  # anything else: report it to the parent
            answer, status = f"crash: {err!r}", 1
        os.write(write_end, answer.encode())
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


@pytest.mark.parametrize("planted", ["none", "foreign", "symlink"])
def test_launcher_writes_rules_only_into_its_own_directory(tmp_path: Path,
                                                           planted: str) -> None:
    folder = Path("/tmp/unixify-65534")
    shutil.rmtree(folder, ignore_errors=True)  # only this test makes it
    if planted == "foreign":
        folder.mkdir()
        folder.chmod(0o777)  # root's, and writable by anyone
    elif planted == "symlink":
        folder.symlink_to(tmp_path)
    try:
        answer = write_as_nobody(b"UFY1")
        if planted == "none":
            info = os.lstat(answer)
            assert answer.startswith(f"{folder}/rules-") and info.st_uid == 65534, answer
            assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o711
        elif planted == "foreign":
            assert answer == (f"error: {folder} is not a private directory of ours (owner 0, "
                              "mode 777); remove it or set XDG_RUNTIME_DIR")
        else:
            assert answer.startswith(f"error: cannot use {folder} for the rules file"), answer
            assert not list(tmp_path.iterdir())
    finally:
        if folder.is_symlink():
            folder.unlink()
        shutil.rmtree(folder, ignore_errors=True)
