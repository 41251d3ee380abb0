"""Shared fixtures: the unixify command, helper programs compiled now, and processes."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

HELPERS = Path(__file__).parent / "helpers"
IN_CI = bool(os.environ.get("CI"))


def unixify_command() -> list[str]:
    found = shutil.which("unixify")
    return [found] if found else [sys.executable, "-m", "unixify"]


def require_tool(name: str) -> str:
    """The path of a tool.  Missing in CI is a failure (.ci/run installs it), locally a skip."""
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None)
    if found:
        return found
    if IN_CI:
        pytest.fail(f"{name} is not installed; .ci/run must install it")
    pytest.skip(f"{name} is not installed")


def free_port() -> int:
    """A port nothing uses on 127.0.0.1 or ::1, for TCP or UDP, at this moment (tests
    bind it in either family; the kernel's pick for one family says nothing of the
    other)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if all(_bindable(family, kind, port) for family in (socket.AF_INET, socket.AF_INET6)
               for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)):
            return port
    raise AssertionError("no port free in both families")


def _bindable(family: int, kind: int, port: int) -> bool:
    with socket.socket(family, kind) as s:
        try:
            s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", port))
        except OSError:
            return False
    return True


def tcp_port_open(port: int, host: str = "127.0.0.1") -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")


# sock_diag (man 7 sock_diag): which Unix socket is bound to a file, and in what state.
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_DUMP_REQUEST = 0x301
_NLMSG_DONE, _NLMSG_ERROR = 3, 2
_UNIX_DIAG_VFS = 1
_UDIAG_SHOW_VFS = 0x2
_NETLINK_SOCK_DIAG = 4
_TCP_LISTEN = 10


def _unix_sockets_by_file() -> dict[tuple[int, int], tuple[int, int]]:
    """Map (st_dev, st_ino) of every bound socket file in this netns to (type, state)."""
    request = struct.pack("=BBHIII8x", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, _UDIAG_SHOW_VFS)
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY,
                         _NLM_F_DUMP_REQUEST, 1, 0)
    found: dict[tuple[int, int], tuple[int, int]] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
        nl.sendall(header + request)
        while True:
            data = nl.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind in (_NLMSG_DONE, _NLMSG_ERROR):
                    return found
                sock_type, state = data[offset + 17], data[offset + 18]
                attr = offset + 16 + 16        # past nlmsghdr and unix_diag_msg
                while attr + 4 <= offset + length:
                    attr_len, attr_type = struct.unpack_from("=HH", data, attr)
                    if attr_type == _UNIX_DIAG_VFS:
                        ino, kdev = struct.unpack_from("=II", data, attr + 4)
                        dev = os.makedev(kdev >> 20, kdev & 0xFFFFF)
                        found[(dev, ino)] = (sock_type, state)
                    attr += (attr_len + 3) & ~3
                offset += (length + 3) & ~3


def socket_ready(path: str | os.PathLike[str]) -> bool:
    """A socket file whose stream socket listens, or whose datagram socket is bound.

    The file appears at bind(), before listen(); a server doing slow work in between
    (http.server resolves its own name there) would refuse an early client.  A file
    with no socket behind it in this network namespace counts as ready: stale files
    and sockets of other namespaces are for the test to judge.
    """
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        return False
    behind = _unix_sockets_by_file().get((st.st_dev, st.st_ino))
    if behind is None:
        return True
    sock_type, state = behind
    return sock_type == socket.SOCK_DGRAM or state == _TCP_LISTEN


def wait_for_socket(path: str | os.PathLike[str], timeout: float = 20.0) -> None:
    wait_for(lambda: socket_ready(path), timeout, f"a socket listening at {path}")


def unix_get(path: str | os.PathLike[str], request: bytes, timeout: float = 10.0) -> bytes:
    """Send request on a Unix stream socket and read until the peer closes."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        if request:  # the server may have answered and closed already
            s.sendall(request)
        chunks: list[bytes] = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def parse_kv(text: str) -> dict[str, str]:
    result = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            result[key] = value
    return result


def preloaded_env(**variables: str) -> dict[str, str]:
    """This environment with the shim preloaded by hand (no launcher), no unsock or
    unixify settings of its own, and variables on top."""
    from unixify.shim import library_path

    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNSOCK_", "UNIXIFY_"))}
    env["LD_PRELOAD"] = library_path()
    env.update(variables)
    return env


def run_wrapped(rules: list[str], program: list[str], verbose: int = 0,
                timeout: float = 10, backend: str = "auto",
                **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run program under unixify with rules to completion, capturing its output."""
    args = [*unixify_command(), f"--backend={backend}"] + ["-v"] * verbose
    for rule in rules:
        args += ["-r", rule]
    return subprocess.run([*args, "--", *program], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for socket files (sun_path holds only 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ufy-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def netns() -> Iterator[list[str]]:
    """A network namespace of the test's own; yields the command prefix that runs in it."""
    ip = require_tool("ip")
    name = f"ufy-test-{os.getpid()}"
    subprocess.run([ip, "netns", "add", name], check=True, timeout=30)
    try:
        yield [ip, "netns", "exec", name]
    finally:
        subprocess.run([ip, "netns", "del", name], timeout=30)


class Processes:
    """Processes started by a test, stopped at its end whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, args: list[str], **kwargs: object) -> subprocess.Popen[str]:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            args, text=True, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def wrapped(self, rules: list[str], program: list[str], verbose: int = 0,
                **kwargs: object) -> subprocess.Popen[str]:
        args = unixify_command() + ["-v"] * verbose
        for rule in rules:
            args += ["-r", rule]
        return self.start([*args, "--", *program], **kwargs)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
                proc.communicate(timeout=5)


@pytest.fixture
def procs() -> Iterator[Processes]:
    p = Processes()
    yield p
    p.stop_all()


def activate(procs: Processes, listen: list[str], rules: list[str], program: list[str],
             extra: list[str] | None = None) -> subprocess.Popen[str]:
    """The program wrapped with rules, started by the real systemd-socket-activate with
    sockets for listen; extra: more of its options (--datagram, --fdname=…)."""
    tool = require_tool("systemd-socket-activate")
    args = [tool]
    for address in listen:
        args += ["-l", address]
    # it passes on only the environment it is told to: keep the sanitizer build under ASan
    args += [f"-E{name}={os.environ[name]}" for name in
             ("UNIXIFY_SHIM", "ASAN_OPTIONS", "UBSAN_OPTIONS") if name in os.environ]
    args += extra or []
    command = unixify_command()
    for rule in rules:
        command += ["-r", rule]
    return procs.start([*args, "--", *command, "--", *program])


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float = 20.0) -> str:
    """Read proc's stdout until a line equal to marker.  Returns all text read so far,
    which may run past the marker; later output comes from proc.communicate()."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
        if marker in data.decode(errors="replace").splitlines():
            return data.decode(errors="replace")
    stderr = ""
    if proc.poll() is not None and proc.stderr is not None:
        stderr = proc.stderr.read()
    raise AssertionError(f"no {marker!r} from {proc.args!r}; got {data!r} {stderr}")


def go_build(source: Path, out: Path, variants: dict[str, str]) -> dict[str, str]:
    """source built with Debian's Go into out, once per name in variants (its value is
    CGO_ENABLED: "0" gives a static binary): name -> path."""
    go = require_tool("go")
    env = dict(os.environ, GOCACHE=str(out / "cache"), GOPATH=str(out / "gopath"),
               GO111MODULE="off", GOFLAGS="", HOME=str(out))
    built = {}
    for name, cgo in variants.items():
        binary = out / name
        subprocess.run([go, "build", "-o", str(binary), str(source)],
                       env=dict(env, CGO_ENABLED=cgo), check=True, timeout=600, cwd=str(out))
        built[name] = str(binary)
    return built


def compile_c(source: Path, output: Path, static: bool = False,
              extra: list[str] | None = None) -> Path:
    cc = os.environ.get("CC", "cc")
    args = [cc, "-O1", "-g", "-Wall", "-Werror", "-o", str(output), str(source)]
    if static:
        args.insert(1, "-static")
    subprocess.run(args + (extra or []), check=True)
    return output


@pytest.fixture(scope="session")
def helper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helpers")


@pytest.fixture(scope="session")
def probe(helper_dir: Path) -> str:
    """The C probe program, dynamically linked (the shim can reach it)."""
    return str(compile_c(HELPERS / "probe.c", helper_dir / "probe"))


@pytest.fixture(scope="session")
def probe_static(helper_dir: Path) -> str:
    """The same program statically linked (the shim cannot reach it)."""
    return str(compile_c(HELPERS / "probe.c", helper_dir / "probe-static", static=True))


@pytest.fixture(scope="session")
def dgram_helper(helper_dir: Path) -> str:
    """The C datagram program (tests/helpers/dgram.c)."""
    return str(compile_c(HELPERS / "dgram.c", helper_dir / "dgram"))


@pytest.fixture(scope="session")
def bindrace(helper_dir: Path) -> str:
    """The C racing program (tests/helpers/bindrace.c)."""
    return str(compile_c(HELPERS / "bindrace.c", helper_dir / "bindrace"))
