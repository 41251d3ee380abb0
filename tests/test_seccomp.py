"""The seccomp back end: static and Go programs, which make their own system calls, get
the rules through a supervisor answering their socket calls (src/supervisor)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    HELPERS,
    compile_c,
    free_port,
    go_build,
    require_tool,
    run_wrapped,
    tcp_port_open,
    unixify_command,
    wait_for,
)

from unixify.encoding import encode_checked
from unixify.rules import parse_rule
from unixify.shim import SUPERVISOR_NAME, supervisor_path

NOBODY = 65534


@pytest.fixture(scope="module")
def static_net(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/helpers/static_net.c, linked statically."""
    out = tmp_path_factory.mktemp("static")
    return str(compile_c(HELPERS / "static_net.c", out / "static_net", static=True))


@pytest.fixture(scope="module")
def go_http(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """tests/helpers/go_http.go without cgo (static) and with it (dynamic)."""
    return go_build(HELPERS / "go_http.go", tmp_path_factory.mktemp("gohttp"),
                    {"static": "0", "cgo": "1"})


def wrapped(rules: list[str], program: list[str], verbose: int = 0,
            backend: str = "auto", **kwargs: Any) -> subprocess.Popen[str]:
    """program started under unixify with rules, its output in pipes."""
    args = [*unixify_command(), f"--backend={backend}"] + ["-v"] * verbose
    for rule in rules:
        args += ["-r", rule]
    proc: subprocess.Popen[str] = subprocess.Popen(
        [*args, "--", *program], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        **kwargs)
    return proc


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline()


def unix_talk(path: Path, request: bytes = b"") -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        if request:
            s.sendall(request)
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def listening_ports() -> set[int]:
    """Every TCP port in LISTEN state here (/proc/net/tcp and tcp6)."""
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_static_c_server_and_client(static_net: str, sockdir: Path,
                                    procs: list[subprocess.Popen[str]]) -> None:
    """The launcher refused static programs; now the server's port is a socket file,
    the wrapped client reaches it, and the file goes when the server exits."""
    port, sock = free_port(), sockdir / "s"
    server = wrapped([f"in,tcp,port={port},path={sock}"],
                     [static_net, "serve", "127.0.0.1", str(port), "2"], verbose=1)
    procs.append(server)
    assert first_line(server) == f"listening inet:127.0.0.1:{port}\n"
    assert sock.is_socket() and port not in listening_ports()
    # a blocking accept, served by a thread of the supervisor: an IP peer (it was AF_UNIX)
    assert re.fullmatch(rb"hello inet:127\.0\.0\.1:\d+\n", unix_talk(sock))
    client = run_wrapped([f"out,tcp,port={port},path={sock}"],
                         [static_net, "connect", "127.0.0.1", str(port)])
    assert re.fullmatch(rf"ok peer inet:127\.0\.0\.1:{port} said hello inet:127\.0\.0\.1:\d+\n",
                        client.stdout), client
    server.wait(timeout=10)
    assert server.stderr is not None
    err = server.stderr.read()
    assert "back end seccomp" in err and "is statically linked" in err, err
    wait_for(lambda: not sock.exists(), 5, "the socket file to go")


def test_converted_socket_reports_ip_family(static_net: str, sockdir: Path,
                                            procs: list[subprocess.Popen[str]]) -> None:
    """SO_DOMAIN and SO_PROTOCOL of a converted socket read as the IP socket's."""
    sock = sockdir / "s"
    server = wrapped([f"in,path={sock}"], [static_net, "serve", "::1", "1", "1"])
    procs.append(server)
    first_line(server)
    result = run_wrapped([f"out,path={sock}"], [static_net, "domain", "::1", "1"])
    assert result.stdout == f"ok domain {socket.AF_INET6} protocol 6\n", result


def test_non_blocking_accept_reports_ip_peer(static_net: str, sockdir: Path,
                                             procs: list[subprocess.Popen[str]]) -> None:
    """accept4 on a non-blocking converted listener gives an IP peer address, and
    TCP_NODELAY on the accepted socket succeeds."""
    port, sock = free_port(), sockdir / "s"
    server = wrapped([f"in,port={port},path={sock}"],
                     [static_net, "serve", "::1", str(port), "1"],
                     env=dict(os.environ, NB="1"))
    procs.append(server)
    assert first_line(server) == f"listening inet6:[::1]:{port}\n"
    reply = unix_talk(sock).decode()
    assert re.fullmatch(r"hello inet6:\[::1\]:\d+\n", reply), reply
    assert server.wait(timeout=10) == 0


@pytest.mark.parametrize("kind", ["static", "cgo"])
def test_go_http_server_and_client(go_http: dict[str, str], kind: str, sockdir: Path,
                                   procs: list[subprocess.Popen[str]]) -> None:
    """Go's net/http server serves curl over the socket file (it would panic on a Unix
    peer address), and the Go client, wrapped, reaches it; no TCP port is opened."""
    curl = require_tool("curl")
    port, sock = free_port(), sockdir / "s"
    server = wrapped([f"in,tcp,port={port},path={sock}"],
                     [go_http[kind], "serve", f"127.0.0.1:{port}"])
    procs.append(server)
    assert first_line(server) == f"listening 127.0.0.1:{port}\n"
    got = subprocess.run([curl, "-sS", "--max-time", "10", "--unix-socket", str(sock),
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=30)
    assert re.fullmatch(rf"hello 127\.0\.0\.1:\d+ via 127\.0\.0\.1:{port}\n", got.stdout), got
    client = run_wrapped([f"out,tcp,port={port},path={sock}"],
                         [go_http[kind], "get", f"http://127.0.0.1:{port}/", "3"],
                         timeout=30)
    assert client.returncode == 0, client
    assert len(re.findall(rf"hello 127\.0\.0\.1:\d+ via 127\.0\.0\.1:{port}\n",
                          client.stdout)) == 3, client
    assert port not in listening_ports() and not tcp_port_open(port)
    server.terminate()
    server.wait(timeout=10)
    wait_for(lambda: not sock.exists(), 5, "the socket file to go")


def test_go_wildcard_listener(go_http: dict[str, str], sockdir: Path,
                              procs: list[subprocess.Popen[str]]) -> None:
    """A rule without a port also converts Go's start-up probe binds ([::1]:0, then
    [::ffff:127.0.0.1]:0 while the first is open: blackholed, as the shim does for a
    second bind to one path, so Go finds dual-stack support); the listener on [::]
    reports loopback with its own port (it reported port 0)."""
    curl = require_tool("curl")
    port, sock = free_port(), sockdir / "s"
    server = wrapped([f"in,path={sock}"], [go_http["static"], "serve", f":{port}"])
    procs.append(server)
    assert first_line(server) == f"listening [::]:{port}\n"
    got = subprocess.run([curl, "-sS", "--max-time", "10", "--unix-socket", str(sock),
                          "http://x/"], capture_output=True, text=True, timeout=30)
    assert re.fullmatch(rf"hello \[::1\]:\d+ via \[::1\]:{port}\n", got.stdout), got
    assert port not in listening_ports()


def test_io_uring_is_refused(static_net: str, sockdir: Path) -> None:
    result = run_wrapped([f"in,path={sockdir}/s"], [static_net, "uring"])
    assert result.stdout == "error io_uring_setup EPERM\n", result
    assert "refused io_uring_setup" in result.stderr, result


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    """A real TCP listener: what a bypass would reach."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        s.settimeout(0.5)
        yield s


def reached(listener: socket.socket) -> bool:
    try:
        listener.accept()[0].close()
    except TimeoutError:
        return False
    return True


def test_int_0x80_connect_is_refused(static_net: str, sockdir: Path,
                                     tcp_listener: socket.socket) -> None:
    """A 64-bit program connecting through the i386 ABI reached TCP past the filter's
    checks of native calls; the filter checks the architecture."""
    port = tcp_listener.getsockname()[1]
    plain = subprocess.run([static_net, "int80", "127.0.0.1", str(port)],
                           capture_output=True, text=True, timeout=10)
    assert plain.stdout == "ok int80 connected\n" and reached(tcp_listener), plain
    result = run_wrapped([f"out,port={port},path={sockdir}/s"],
                         [static_net, "int80", "127.0.0.1", str(port)])
    assert result.stdout == "error connect EPERM\n", result
    assert "refused an i386 system call" in result.stderr, result
    assert not reached(tcp_listener)


def gone(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_supervisor_killed_fails_closed(static_net: str, sockdir: Path,
                                        tcp_listener: socket.socket,
                                        procs: list[subprocess.Popen[str]]) -> None:
    """With the supervisor gone, the program's next connect fails (ENOSYS) instead of
    reaching TCP."""
    port = tcp_listener.getsockname()[1]
    sock = sockdir / "s"
    server = wrapped([f"in,path={sock}"], [static_net, "serve", "127.0.0.1", "1", "1"])
    procs.append(server)
    first_line(server)
    client = wrapped([f"out,port={port},path={sock}"],
                     [static_net, "connect2", "127.0.0.1", str(port)], verbose=2,
                     stdin=subprocess.PIPE)
    procs.append(client)
    assert first_line(client).startswith("ok peer inet:127.0.0.1")
    assert client.stderr is not None
    supervisor = 0
    for _ in range(20):
        line = client.stderr.readline()
        found = re.match(r"unixify\[(\d+)\]: supervising", line)
        if found:
            supervisor = int(found.group(1))
            break
    assert supervisor, "the supervisor's pid in its log"
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: gone(supervisor), 5, "the kill")
    assert client.stdin is not None
    out, _ = client.communicate("go\n", timeout=10)
    assert out == "error connect ENOSYS\n"
    assert not reached(tcp_listener)


def test_sigalrm_during_connect(static_net: str, sockdir: Path,
                                procs: list[subprocess.Popen[str]]) -> None:
    """A timer firing every millisecond (SA_RESTART) during supervised connects: each
    connect completes once, with no connection lost or fd leaked."""
    sock = sockdir / "s"
    rounds = 20
    server = wrapped([f"in,path={sock}"],
                     [static_net, "serve", "127.0.0.1", "1", str(rounds)])
    procs.append(server)
    first_line(server)
    for _ in range(rounds):
        result = run_wrapped([f"out,path={sock}"],
                             [static_net, "connect-alarm", "127.0.0.1", "1"])
        assert result.stdout.startswith("ok peer inet:127.0.0.1:1 said hello"), result
    assert server.wait(timeout=10) == 0


def test_sigalrm_during_blocking_accept(static_net: str, sockdir: Path,
                                        procs: list[subprocess.Popen[str]]) -> None:
    """A server whose blocking accepts are interrupted every millisecond (SA_RESTART)
    gets every connection once, with an IP peer: one its interrupted call could not
    take waits for the next accept."""
    sock, rounds = sockdir / "s", 30
    server = wrapped([f"in,path={sock}"], [static_net, "serve", "127.0.0.1", "1", str(rounds)],
                     env=dict(os.environ, ALARM="1"))
    procs.append(server)
    first_line(server)
    for _ in range(rounds):
        assert unix_talk(sock).startswith(b"hello inet:127.0.0.1:")
    assert server.wait(timeout=10) == 0


def test_rule_actions(static_net: str, sockdir: Path, tcp_listener: socket.socket) -> None:
    """reject fails with its errno, ignore reaches TCP, blackhole binds nowhere, abstract
    names work both ways."""
    port = tcp_listener.getsockname()[1]
    target = [static_net, "connect", "127.0.0.1", str(port)]
    result = run_wrapped([f"out,port={port},reject=EHOSTUNREACH"], target)
    assert result.stdout == "error connect EHOSTUNREACH\n", result
    assert not reached(tcp_listener)
    ignored = wrapped([f"out,port={port},ignore", f"out,path={sockdir}/x"], target)
    assert reached(tcp_listener)  # and closed at once: the client reads nothing
    out, err = ignored.communicate(timeout=10)
    assert out == f"ok peer inet:127.0.0.1:{port} said ", (out, err)
    result = run_wrapped([f"out,path={sockdir}/missing"], target)
    assert result.stdout == "error connect ECONNREFUSED\n", result
    free = free_port()
    hole = subprocess.Popen([*unixify_command(), "-r", "in,blackhole", static_net, "serve",
                             "0.0.0.0", str(free), "1"], stdout=subprocess.PIPE, text=True)
    try:
        assert hole.stdout is not None
        assert hole.stdout.readline() == f"listening inet:0.0.0.0:{free}\n"
        assert free not in listening_ports()
    finally:
        hole.kill()
        hole.wait(timeout=10)
    name = f"ufy-abstract-{os.getpid()}"
    server = subprocess.Popen([*unixify_command(), "-r", f"in,abstract={name}", static_net,
                               "serve", "127.0.0.1", str(free), "1"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        result = run_wrapped([f"out,abstract={name}"],
                             [static_net, "connect", "127.0.0.1", str(free)])
        assert re.fullmatch(rf"ok peer inet:127\.0\.0\.1:{free} said hello inet:\S+\n",
                            result.stdout), result
    finally:
        server.kill()
        server.wait(timeout=10)


def test_fork_exec_and_daemon(static_net: str, sockdir: Path) -> None:
    """One supervisor serves the whole tree: a shell (forced onto the seccomp back end)
    forks and execs clients, and a double-forked server outlives it; its socket file
    goes when the daemon exits."""
    sock, pidfile = sockdir / "s", sockdir / "pid"
    script = (f"( {static_net} serve 127.0.0.1 7 2 > {sockdir}/log 2>&1 & "
              f"echo $! > {pidfile} ) ;"
              f" while [ ! -S {sock} ]; do sleep 0.05; done")
    with open(sockdir / "err", "w") as err:  # the daemon and supervisor hold it open
        started = subprocess.run([*unixify_command(), "--backend=seccomp", "-r",
                                  f"in,port=7,path={sock}", "sh", "-c", script],
                                 stdout=err, stderr=err, timeout=20)
    assert started.returncode == 0, (sockdir / "err").read_text()
    clients = run_wrapped([f"out,port=7,path={sock}"],
                          ["sh", "-c", f"{static_net} connect 127.0.0.1 7; "
                                       f"exec {static_net} connect 127.0.0.1 7"],
                          backend="seccomp")
    assert clients.stdout.count("ok peer inet:127.0.0.1:7 said hello") == 2, clients
    wait_for(lambda: not sock.exists(), 10, "the daemon's socket file to go")


@pytest.fixture
def as_nobody(static_net: str, sockdir: Path) -> tuple[Path, str, str]:
    """A directory uid 65534 may write, with readable copies of the supervisor and of
    static_net (the installed ones may sit under a 0700 /root)."""
    shared = sockdir / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    sockdir.chmod(0o755)
    program = shutil.copy(static_net, shared / "static_net")
    supervisor = shutil.copy(supervisor_path(), shared / SUPERVISOR_NAME)
    return shared, str(supervisor), str(program)


def drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def supervised_by_nobody(as_nobody: tuple[Path, str, str], rule: str, args: list[str],
                         env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    _, supervisor, program = as_nobody
    rules = [parse_rule(rule, "/")]
    env = dict(os.environ, **(env or {}), UNIXIFY_RULES=os.fsdecode(encode_checked(rules)))
    proc: subprocess.Popen[str] = subprocess.Popen(
        [supervisor, program, "static_net", *args], stdout=subprocess.PIPE, text=True,
        env=env, preexec_fn=drop_to_nobody)
    return proc


def test_unprivileged_user(as_nobody: tuple[Path, str, str]) -> None:
    """uid 65534 runs a program under the supervisor: no_new_privs lets it install the
    filter, and its socket file is its own."""
    sock = as_nobody[0] / "s"
    server = supervised_by_nobody(as_nobody, f"in,path={sock}",
                                  ["serve", "127.0.0.1", str(free_port()), "1"])
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith("listening inet:127.0.0.1")
        assert sock.stat().st_uid == NOBODY
        assert unix_talk(sock).startswith(b"hello inet:127.0.0.1:")
        assert server.wait(timeout=10) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
    wait_for(lambda: not sock.exists(), 5, "the socket file to go")


def test_non_dumpable_program_fails_closed(as_nobody: tuple[Path, str, str]) -> None:
    """A program that makes itself non-dumpable cannot be inspected by a supervisor that
    is not root: its bind is refused (it was let through to the kernel: a TCP port)."""
    port = free_port()
    server = supervised_by_nobody(as_nobody, f"in,path={as_nobody[0]}/s",
                                  ["serve", "127.0.0.1", str(port), "1"], {"NODUMP": "1"})
    try:
        out, _ = server.communicate(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
    assert out == "error bind EACCES\n"
    assert port not in listening_ports()


def test_backend_choice_and_errors(static_net: str, sockdir: Path) -> None:
    """auto picks the shim for a dynamic program and says why at -v; a bad --backend is
    one line."""
    result = run_wrapped([f"in,path={sockdir}/s"], [sys.executable, "-c", "pass"],
                         verbose=1)
    assert "back end preload:" in result.stderr, result
    result = run_wrapped([f"in,path={sockdir}/s"], [static_net, "uring"], backend="fast")
    assert result.returncode == 1
    assert result.stderr == ("unixify: --backend 'fast': expected one of auto, preload, "
                             "seccomp\n"), result
    missing = run_wrapped([f"in,path={sockdir}/s"], [static_net, "uring"],
                          env=dict(os.environ, UNIXIFY_SUPERVISOR="/nonexistent/sv"))
    assert (missing.returncode, missing.stderr) == (
        126, "unixify: cannot run the seccomp supervisor /nonexistent/sv: No such file or "
        "directory\n"), missing


def test_stale_live_and_noremove(static_net: str, sockdir: Path) -> None:
    """A stale socket file is replaced, a live one never taken; noremove keeps the file
    after the program exits."""
    sock = sockdir / "s"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()
    serve = [static_net, "serve", "127.0.0.1", "1", "1"]
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(sockdir / "live"))
        live.listen(1)
        taken = run_wrapped([f"in,path={sockdir}/live"], serve)
        assert taken.stdout == "error bind EADDRINUSE\n", taken
    server = wrapped([f"in,path={sock},noremove"], serve)
    try:
        assert first_line(server).startswith("listening")
        assert unix_talk(sock).startswith(b"hello inet:127.0.0.1:")
        assert server.wait(timeout=10) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate(timeout=10)  # until the supervisor, holding stderr, is done
    assert sock.is_socket()


def test_owner_group_and_udp_refusal(static_net: str, sockdir: Path) -> None:
    """owner=/group= with mode= (the supervisor runs as root here): the file is the
    rule's from the start.  A rule that could convert UDP makes IP datagram sockets
    fail (this back end does not translate datagram addresses), with a log line."""
    sock = sockdir / "s"
    server = subprocess.Popen([*unixify_command(), "-r",
                               f"in,tcp,path={sock},mode=0640,owner={NOBODY},group={NOBODY}",
                               static_net, "serve", "127.0.0.1", "1", "1"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith("listening")
        st = sock.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (NOBODY, NOBODY, 0o640)
    finally:
        server.kill()
        server.wait(timeout=10)
    udp = run_wrapped([f"out,path={sockdir}/u"], [static_net, "udp"])
    assert udp.stdout == "error socket EAFNOSUPPORT\n", udp
    assert "refused socket (a rule without 'tcp' could convert UDP" in udp.stderr, udp
    tcp_only = run_wrapped([f"out,tcp,path={sockdir}/u"], [static_net, "udp"])
    assert tcp_only.stdout == "ok udp socket\n", tcp_only


def test_socket_file_modes(static_net: str, sockdir: Path) -> None:
    """mode= gives the file its mode from the start; without it the program's own umask
    (set after the launcher's) decides, not the supervisor's."""
    for rule, umask, expected in (("mode=0660", "022", 0o660), ("", "077", 0o700),
                                  ("", "002", 0o775)):
        sock = sockdir / f"s{umask}"
        server = subprocess.Popen(
            [*unixify_command(), "--backend=seccomp", "-r",
             f"in,path={sock}" + (f",{rule}" if rule else ""), "sh", "-c",
             f"umask {umask}; exec {static_net} serve 127.0.0.1 1 1"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            assert server.stdout.readline().startswith("listening")
            assert sock.stat().st_mode & 0o777 == expected, (rule, umask)
        finally:
            server.kill()
            server.wait(timeout=10)
