"""Connections a program makes to its own converted listeners, clients that bind a source
address before connecting, and listeners on port 0 under a rule whose path names the
port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    Processes,
    free_port,
    read_until,
    require_tool,
    run_wrapped,
    wait_for,
    wait_for_socket,
)


def tcp_sockets_of(pids: list[int]) -> list[str]:
    """The TCP sockets (as /proc/net/tcp lines) that the processes pids hold."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(FileNotFoundError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as f:
            found += [line for line in f.readlines()[1:] if line.split()[9] in inodes]
    return found


# ---- a program's connections to its own listeners ----

SELF_CONNECT = r"""
import os, socket, sys
host, port, *dests = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
srv.bind((host, port))
srv.listen()
srv.settimeout(5)

def ask(dest):
    family = socket.AF_INET6 if ":" in dest else socket.AF_INET
    c = socket.socket(family)
    c.settimeout(5)
    try:
        c.connect((dest, port))
    except OSError as e:
        return "refused" if isinstance(e, ConnectionRefusedError) else repr(e)
    a, _ = srv.accept()
    a.sendall(b"mine")
    got = c.recv(4).decode()
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            mine.add(os.readlink("/proc/self/fd/" + fd))
        except FileNotFoundError:
            pass
    tcp = [line for name in ("/proc/net/tcp", "/proc/net/tcp6")
           for line in open(name).readlines()[1:]
           if "socket:[%s]" % line.split()[9] in mine]
    c.close()
    a.close()
    return got + ("" if not tcp else " tcp:" + repr(tcp))

for dest in dests:
    print(dest, ask(dest), flush=True)
pid = os.fork()
if pid == 0:
    print("child", ask(dests[0]), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_own_listener_reached_without_out_rule(sockdir: Path) -> None:
    """A connect to the address our converted listener stands for reaches it, in the
    process and in its forked child, with no out rule and no TCP socket anywhere."""
    port = free_port()
    path = sockdir / "own.sock"
    proc = run_wrapped([f"in,port={port},path={path}"],
                       [sys.executable, "-c", SELF_CONNECT, "127.0.0.1", str(port),
                        "127.0.0.1", "0.0.0.0"], timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["127.0.0.1 mine", "0.0.0.0 mine", "child mine"], \
        proc.stderr


def test_wildcard_listener_reached_by_loopback_and_ipv6(sockdir: Path) -> None:
    """A wildcard listener is reached through any loopback address (127.0.0.2 too) and,
    bound to ::, through IPv4 as well, like TCP; an unconditional out rule does not take
    the connection elsewhere."""
    port = free_port()
    elsewhere = sockdir / "elsewhere.sock"
    rules = [f"in,port={port},path={sockdir}/own-%a.sock", f"out,path={elsewhere}"]
    proc = run_wrapped(rules, [sys.executable, "-c", SELF_CONNECT, "::", str(port),
                               "::1", "127.0.0.2", "127.0.0.1"], timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["::1 mine", "127.0.0.2 mine", "127.0.0.1 mine",
                                        "child mine"], proc.stderr
    assert not elsewhere.exists()


def test_wildcard_listener_reached_by_a_local_address_only(sockdir: Path,
                                                           netns: list[str]) -> None:
    """In a namespace of the test's own with 10.7.7.7 on lo: a wildcard listener is
    reached through that local address too; 10.7.7.8, not local, is left to TCP (no
    route there: unreachable)."""
    port = free_port()
    subprocess.run([*netns, "ip", "link", "set", "lo", "up"], check=True, timeout=30)
    subprocess.run([*netns, "ip", "addr", "add", "10.7.7.7/32", "dev", "lo"], check=True,
                   timeout=30)
    proc = run_wrapped([f"in,port={port},path={sockdir}/own.sock"],
                       [*netns, sys.executable, "-c", SELF_CONNECT, "0.0.0.0", str(port),
                        "10.7.7.7", "10.7.7.8"], timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "10.7.7.7 mine" and lines[2] == "child mine", proc.stderr
    assert lines[1].startswith("10.7.7.8 OSError(101"), proc.stderr  # ENETUNREACH


EXEC_CONNECT = r"""
import socket, subprocess, sys
port = int(sys.argv[1])
srv = socket.socket()
srv.bind(("127.0.0.1", port))
srv.listen()
srv.settimeout(10)
child = subprocess.Popen([sys.executable, "-c",
    "import socket, sys; c = socket.create_connection(('127.0.0.1', %d), timeout=5); "
    "print(c.recv(4).decode())" % port], pass_fds=[srv.fileno()])
a, _ = srv.accept()
a.sendall(b"mine")
sys.exit(child.wait())
"""


def test_own_listener_reached_from_exec_child(sockdir: Path) -> None:
    """A child that inherited the listener across exec reaches it by its address."""
    port = free_port()
    proc = run_wrapped([f"in,port={port},path={sockdir}/own.sock"],
                       [sys.executable, "-c", EXEC_CONNECT, str(port)], timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "mine\n"


@contextlib.contextmanager
def tcp_listener(port: int) -> Iterator[socket.socket]:
    """A real TCP server on 127.0.0.1:port (another user's, say)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        yield s


def test_unreachable_own_listener_fails_closed(sockdir: Path) -> None:
    """Our listener there is blackholed: the connect is refused, and never goes to the
    real TCP server that holds the port meanwhile."""
    port = free_port()
    with tcp_listener(port) as other:
        proc = run_wrapped([f"in,port={port},blackhole"],
                           [sys.executable, "-c", SELF_CONNECT, "127.0.0.1", str(port),
                            "127.0.0.1"], timeout=30)
        other.settimeout(0)
        with pytest.raises(BlockingIOError):
            other.accept()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["127.0.0.1 refused", "child refused"], proc.stderr


APACHE_CONF = """\
ServerRoot {dir}
ServerName localhost
User nobody
Group nogroup
LoadModule mpm_prefork_module /usr/lib/apache2/modules/mod_mpm_prefork.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
Listen 127.0.0.1:{port}
PidFile {dir}/httpd.pid
ErrorLog {dir}/error.log
LogLevel info
DocumentRoot {dir}/www
<Directory {dir}/www>
    Require all granted
</Directory>
StartServers 6
MinSpareServers 1
MaxSpareServers 2
"""


def children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in tasks.read_text().split()] if tasks.exists() else []


def test_apache_prefork_wakes_and_trims_children(sockdir: Path, procs: Processes) -> None:
    """Apache prefork wakes idle children by connecting to its own listen address: with
    only an 'in' rule it must not warn AH00056 every second, and it trims its six children
    down to MaxSpareServers."""
    apache = require_tool("apache2")
    port = free_port()
    (sockdir / "www").mkdir()
    (sockdir / "www" / "index.html").write_text("hello from apache\n")
    os.chmod(sockdir, 0o755)
    conf = sockdir / "httpd.conf"
    conf.write_text(APACHE_CONF.format(dir=sockdir, port=port))
    path = sockdir / "web.sock"
    server = procs.wrapped([f"in,port={port},path={path}"],
                           [apache, "-f", str(conf), "-DFOREGROUND"])
    wait_for_socket(path)
    got = subprocess.run(["curl", "-sS", "--unix-socket", str(path),
                          "http://localhost/index.html"],
                         capture_output=True, text=True, timeout=20)
    assert got.stdout == "hello from apache\n", got.stderr
    pidfile = sockdir / "httpd.pid"
    wait_for(pidfile.exists, what="the pid file")
    pid = int(pidfile.read_text())
    wait_for(lambda: 0 < len(children(pid)) <= 2, timeout=30, what="children trimmed to 2")
    log = (sockdir / "error.log").read_text()
    assert "AH00056" not in log, log
    assert tcp_sockets_of([pid, *children(pid)]) == []
    assert server.poll() is None


# ---- clients that bind a source address before connecting ----

class HttpServer:
    """Answers each HTTP request; on a Unix or TCP socket.  Records each peer address and
    whether the file watch existed while the connection was open."""

    def __init__(self, sock: socket.socket, watch: Path) -> None:
        self.sock = sock
        self.watch = watch
        self.peers: list[object] = []
        self.watched: list[bool] = []
        sock.listen()
        sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                self.peers.append(peer)
                with contextlib.suppress(OSError):
                    conn.recv(4096)
                    self.watched.append(self.watch.exists())
                    body = b"served\n"
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def curl_bound(rules: list[str], port: int, local_port: int) -> subprocess.CompletedProcess[str]:
    curl = require_tool("curl")
    return run_wrapped(rules, [curl, "-sS", "--max-time", "10", "--interface", "127.0.0.1",
                               "--local-port", str(local_port), f"http://127.0.0.1:{port}/"],
                       verbose=1, timeout=30)


@pytest.mark.no_asan  # curl deadlocks in setlocale with libasan preloaded, shim or not
def test_client_bound_first_reaches_converted_destination(sockdir: Path) -> None:
    """curl --interface/--local-port under an 'in' rule for that port: its connect goes
    where an 'out' rule sends it, and the bind leaves no file behind."""
    local_port, port = free_port(), free_port()
    dest = sockdir / "dest.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(dest))
    http = HttpServer(server, sockdir / "src.sock")
    try:
        got = curl_bound([f"in,port={local_port},path={sockdir}/src.sock",
                          f"out,port={port},path={dest}"], port, local_port)
    finally:
        http.close()
    assert got.returncode == 0 and got.stdout == "served\n", got.stderr
    assert http.watched == [False]  # gone while the connection was open
    assert sorted(os.listdir(sockdir)) == ["dest.sock"]


@pytest.mark.no_asan  # curl deadlocks in setlocale with libasan preloaded, shim or not
def test_client_bound_first_over_tcp_never_opens_claimed_port(sockdir: Path) -> None:
    """With no 'out' rule for the destination the connect is real TCP, from the source
    address, but never from the port the 'in' rule claimed."""
    local_port, port = free_port(), free_port()
    server = socket.socket()
    server.bind(("127.0.0.1", port))
    http = HttpServer(server, sockdir / "src.sock")
    try:
        got = curl_bound([f"in,port={local_port},path={sockdir}/src.sock"], port, local_port)
    finally:
        http.close()
    assert got.returncode == 0 and got.stdout == "served\n", got.stderr
    assert len(http.peers) == 1
    peer = http.peers[0]
    assert isinstance(peer, tuple) and peer[0] == "127.0.0.1" and peer[1] != local_port
    assert http.watched == [False]
    assert os.listdir(sockdir) == []
    assert "a client" in got.stderr


@pytest.mark.no_asan  # curl deadlocks in setlocale with libasan preloaded, shim or not
def test_client_bind_reports_live_file(sockdir: Path) -> None:
    """The bind still fails with EADDRINUSE when its file is live."""
    local_port, port = free_port(), free_port()
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(sockdir / "src.sock"))
    live.listen()
    try:
        got = curl_bound([f"in,port={local_port},path={sockdir}/src.sock"], port, local_port)
    finally:
        live.close()
    assert got.returncode == 45, got.stderr  # CURLE_INTERFACE_FAILED
    assert "Address already in use" in got.stderr


BIND_THEN_CONNECT = r"""
import os, socket, sys
local_port, port, watch = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
c = socket.socket()
c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
c.bind(("127.0.0.1", local_port))
c.connect(("127.0.0.1", port))
print(os.path.exists(watch), c.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
      flush=True)
c.sendall(b"GET / HTTP/1.0\r\n\r\n")
print(c.recv(4096).decode().split("\r\n\r\n", 1)[1], end="")
"""


@pytest.mark.parametrize("dest", ["unix", "tcp"])
def test_bind_then_connect_is_a_client(sockdir: Path, dest: str) -> None:
    """The same calls as curl --local-port make, from python: the connect is matched
    against the rules (an 'out' rule, or real TCP never from the claimed port), options
    set before the bind come along, and the bind's file is gone once it connected."""
    local_port, port = free_port(), free_port()
    rules = [f"in,port={local_port},path={sockdir}/src.sock"]
    if dest == "unix":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(sockdir / "dest.sock"))
        rules.append(f"out,port={port},path={sockdir}/dest.sock")
    else:
        server = socket.socket()
        server.bind(("127.0.0.1", port))
    http = HttpServer(server, sockdir / "src.sock")
    try:
        got = run_wrapped(rules, [sys.executable, "-c", BIND_THEN_CONNECT, str(local_port),
                                  str(port), str(sockdir / "src.sock")], timeout=30)
    finally:
        http.close()
    assert got.returncode == 0, got.stderr
    assert got.stdout == "False True\nserved\n"
    assert http.watched == [False]
    if dest == "tcp":
        peer = http.peers[0]
        assert isinstance(peer, tuple) and peer[1] != local_port


# ---- port 0 under a rule whose path names the port ----

PORT_ZERO = r"""
import socket, sys
listeners = []
for i in range(2):
    s = socket.socket()
    s.bind(("1.2.3.4", 0))
    s.listen()
    s.settimeout(10)
    listeners.append(s)
print(" ".join(str(s.getsockname()[1]) for s in listeners), flush=True)
if sys.argv[1] == "self":
    for i, s in enumerate(listeners):
        c = socket.create_connection(("1.2.3.4", s.getsockname()[1]), timeout=5)
        c.sendall(b"%d" % i)
print("ready", flush=True)
for s in listeners:
    a, _ = s.accept()
    print(a.recv(8).decode(), flush=True)
print("done", flush=True)
sys.stdin.readline()
"""

CONNECT_TO = r"""
import socket, sys
for i, port in enumerate(sys.argv[1:]):
    socket.create_connection(("1.2.3.4", int(port)), timeout=5).sendall(b"%d" % i)
"""


def test_port_zero_listeners_get_files_of_their_own(sockdir: Path, procs: Processes) -> None:
    """Two port-0 listeners under 'path=…-%p.sock' get two files named by the ports they
    report, and clients (another process, under the same rule) reach each by its port."""
    rule = f"addr=1.2.3.4,path={sockdir}/foo-%p.sock"
    server = procs.wrapped([rule], [sys.executable, "-c", PORT_ZERO, "other"],
                           stdin=subprocess.PIPE)
    out = read_until(server, "ready")
    ports = [int(p) for p in out.splitlines()[0].split()]
    assert len(set(ports)) == 2 and 0 not in ports
    assert sorted(os.listdir(sockdir)) == sorted(f"foo-{p}.sock" for p in ports)
    client = run_wrapped([rule], [sys.executable, "-c", CONNECT_TO, *map(str, ports)])
    assert client.returncode == 0, client.stderr
    stdout, stderr = server.communicate(input="\n", timeout=20)
    assert (out + stdout).splitlines()[1:] == ["ready", "0", "1", "done"], stderr


@pytest.mark.parametrize("mode", ["", ",mode=0600"])
def test_port_zero_same_process_and_live_files_skipped(sockdir: Path, procs: Processes,
                                                       mode: str) -> None:
    """The process reaches its port-0 listeners by the ports they report; a second
    process under the same rule skips the ports whose files the first holds (with
    mode=, after its socket was bound aside in a private directory)."""
    rule = f"addr=1.2.3.4,path={sockdir}/foo-%p.sock{mode}"
    first = procs.wrapped([rule], [sys.executable, "-c", PORT_ZERO, "self"],
                          stdin=subprocess.PIPE)
    out = read_until(first, "done")
    ports = [int(p) for p in out.splitlines()[0].split()]
    assert out.splitlines()[1:] == ["ready", "0", "1", "done"]
    second = procs.wrapped([rule], [sys.executable, "-c", PORT_ZERO, "self"],
                           stdin=subprocess.PIPE)
    out = read_until(second, "done")
    more = [int(p) for p in out.splitlines()[0].split()]
    assert out.splitlines()[1:] == ["ready", "0", "1", "done"]
    assert len(set(ports + more)) == 4, (ports, more)
    assert sorted(os.listdir(sockdir)) == sorted(f"foo-{p}.sock" for p in ports + more)
    for proc in (first, second):
        proc.communicate(input="\n", timeout=20)
        assert proc.returncode == 0
    deadline = time.monotonic() + 10
    while os.listdir(sockdir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(sockdir) == []


def test_port_zero_rule_names_port_zero(sockdir: Path) -> None:
    """A rule for port 0 alone takes no other port: its file is named by port 0."""
    code = ("import os, socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
            "s.listen(); print(sorted(os.listdir(sys.argv[1])))")
    got = run_wrapped([f"in,port=0,path={sockdir}/x-%p.sock"],
                      [sys.executable, "-c", code, str(sockdir)])
    assert got.returncode == 0, got.stderr
    assert got.stdout == "['x-0.sock']\n"
