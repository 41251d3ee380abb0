"""Converted sockets handed between processes: over SCM_RIGHTS (HAProxy's -x and its
master-worker reloads, Node's cluster), paused and resumed around a reload (HAProxy's
-sf), and the client ports a server's forked workers report."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import (
    HELPERS,
    Processes,
    compile_c,
    free_port,
    read_until,
    require_tool,
    run_wrapped,
    unix_get,
    wait_for,
    wait_for_socket,
)

PASSFD = str(HELPERS / "passfd.py")
EPHEMERAL = range(32768, 61000)


def hand_over(procs: Processes, sockdir: Path, rules: list[str], kind: str,
              *args: str, wrapped: bool = True, connect: Path | None = None,
              hold: bool = False) -> tuple[list[dict[str, Any]], subprocess.Popen[str]]:
    """A sender makes a socket of kind and hands it to a wrapped receiver; what the
    receiver sees of each socket it got, and the receiver (still running when hold)."""
    channel = sockdir / "channel"
    command = [sys.executable, PASSFD, "send", str(channel), kind, *args]
    sender = procs.wrapped(rules, command) if wrapped else procs.start(command)
    client = None
    if connect is not None:
        read_until(sender, "listening")
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(connect))
    wait_for_socket(channel)
    receiver = procs.wrapped(rules, [sys.executable, PASSFD, "recv", str(channel),
                                     *(["hold"] if hold else [])],
                             stdin=subprocess.PIPE)
    text = read_until(receiver, "done")
    if not hold:
        receiver.communicate(timeout=20)
        assert receiver.returncode == 0
    sender.communicate(timeout=20)
    if client is not None:
        client.close()
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")], receiver


def test_received_listener_reports_its_ip_address(procs: Processes, sockdir: Path) -> None:
    port, sock = free_port(), sockdir / "l.sock"
    rules = [f"in,addr=127.0.0.1,port={port},path={sock}"]
    [got], _ = hand_over(procs, sockdir, rules, "listener", "127.0.0.1", str(port))
    assert got["family"] == "AF_INET", got
    assert got["sockname"] == ["127.0.0.1", port]
    assert got["acceptconn"] == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_received_listener_placeholders_read_back(procs: Processes, sockdir: Path,
                                                  host: str) -> None:
    """%a and %p in the path: the address and port are read back from the name."""
    port = free_port()
    rules = [f"in,path={sockdir}/l-%a-%t-%p.sock"]
    [got], _ = hand_over(procs, sockdir, rules, "listener", host, str(port))
    assert got["family"] == ("AF_INET6" if ":" in host else "AF_INET"), got
    assert got["sockname"][:2] == [host, port]


def test_received_listener_takes_on_its_file(procs: Processes, sockdir: Path) -> None:
    """The sender exits first: the receiver, holding the socket, removes the file when
    it is done with it."""
    port, sock = free_port(), sockdir / "l.sock"
    rules = [f"in,addr=127.0.0.1,port={port},path={sock}"]
    _, receiver = hand_over(procs, sockdir, rules, "listener", "127.0.0.1", str(port),
                            hold=True)
    assert sock.exists(), "the file went while the receiver holds its socket"
    receiver.communicate("", timeout=20)
    wait_for(lambda: not sock.exists(), 10, "the receiver to remove the socket file")


def test_received_connection_reports_loopback_peer(procs: Processes, sockdir: Path) -> None:
    """A primary accepts and hands the connection to a worker (Node's cluster)."""
    port, sock = free_port(), sockdir / "l.sock"
    rules = [f"in,addr=127.0.0.1,port={port},path={sock}"]
    [got], _ = hand_over(procs, sockdir, rules, "accepted", "127.0.0.1", str(port),
                         connect=sock)
    assert got["family"] == "AF_INET", got
    assert got["sockname"] == ["127.0.0.1", port]
    assert got["peername"][0] == "127.0.0.1" and got["peername"][1] in EPHEMERAL


def test_received_client_reports_its_peer(procs: Processes, sockdir: Path) -> None:
    target = sockdir / "t.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(target))
    server.listen()
    rules = [f"out,addr=10.1.2.3,port=80,path={target}"]
    [got], _ = hand_over(procs, sockdir, rules, "client", "10.1.2.3", "80")
    server.close()
    assert got["family"] == "AF_INET", got
    assert got["peername"] == ["10.1.2.3", 80]
    assert got["sockname"][0] == "127.0.0.1"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_socket_passed_before_connect_is_the_ip_socket(procs: Processes, sockdir: Path,
                                                         host: str) -> None:
    """Under a rule that converts every connect, socket() makes the Unix socket at once
    (pending); passed on before its connect, it must reach the other process as the IP
    socket it stands for, not as a nameless Unix socket nobody can tell for one."""
    rules = [f"out,tcp,path={sockdir}/o-%p.sock"]
    [got], _ = hand_over(procs, sockdir, rules, "fresh", host)
    assert got["family"] == ("AF_INET6" if ":" in host else "AF_INET"), got
    assert got["type"] == "SOCK_STREAM" and got["acceptconn"] == 0, got


@pytest.mark.parametrize("kind", ["pair", "unix"])
def test_received_unix_sockets_stay_unix(procs: Processes, sockdir: Path,
                                         kind: str) -> None:
    port = free_port()
    rules = [f"in,path={sockdir}/l-%p.sock", f"out,path={sockdir}/o-%p.sock"]
    [got], _ = hand_over(procs, sockdir, rules, kind, str(sockdir / "plain.sock"))
    assert got["family"] == "AF_UNIX", got
    assert port  # the rules convert any port: only the names decide


@pytest.mark.parametrize("name", [
    "l.sock",           # named as a rule's file, but that file is another socket's now
    "p-080.sock",       # %p as no port is written
    "q-80.sock",        # a port the rule's condition excludes
])
def test_received_forged_names_stay_unix(procs: Processes, sockdir: Path, name: str) -> None:
    """Unix sockets an unwrapped sender made, named as converted sockets would be: the
    receiver believes only names the rules give and files the socket is bound to."""
    port = free_port()
    rules = [f"in,addr=127.0.0.1,port={port},path={sockdir}/l.sock",
             f"in,path={sockdir}/p-%p.sock", f"in,port=1000-2000,path={sockdir}/q-%p.sock"]
    kind = "moved" if name == "l.sock" else "unix"
    [got], _ = hand_over(procs, sockdir, rules, kind, str(sockdir / name), wrapped=False)
    assert got["family"] == "AF_UNIX", got


def test_resume_where_no_rule_gives_the_path_fails(sockdir: Path) -> None:
    """A port-0 listener under a rule for port 0 only reports a port no rule gives a
    path for: resuming it must fail with an error, not crash the program."""
    script = ("import socket,sys\n"
              "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
              "import ctypes; libc=ctypes.CDLL(None, use_errno=True)\n"
              "sa=(ctypes.c_ushort*8)(0)  # AF_UNSPEC\n"
              "print('pause', libc.connect(s.fileno(), sa, 16), flush=True)\n"
              "try:\n s.listen()\nexcept OSError as e:\n print('resume', e.errno)\n"
              "else:\n print('resume 0')\n")
    out = run_wrapped([f"in,port=0,path={sockdir}/zero.sock"], [sys.executable, "-c", script])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["pause 0", f"resume {errno.EADDRNOTAVAIL}"], out


def test_pause_and_resume_listener(procs: Processes, sockdir: Path,
                                   helper_dir: Path) -> None:
    """connect(AF_UNSPEC) pauses a listener (HAProxy's reload): the path is released;
    listen() resumes it there, still registered with epoll; a live socket in the way
    makes the resume fail as TCP's would."""
    pause = compile_c(HELPERS / "pause.c", helper_dir / "pause")
    port, sock = free_port(), sockdir / "l.sock"
    proc = procs.wrapped([f"in,addr=127.0.0.1,port={port},path={sock}"],
                         [str(pause), "127.0.0.1", str(port), str(sock)], stdin=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None

    def step() -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    assert proc.stdout.readline().strip() == "listening"
    assert step() == "paused=0:0 acceptconn=0"
    assert not sock.exists(), "a paused listener keeps its path"
    assert step() == "resumed=0:0 acceptconn=1"
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(str(sock))
        assert step() == f"accepted=1 local=127.0.0.1:{port}"
    assert step() == "paused2=0:0"
    holder = socket.socket(socket.AF_UNIX)
    holder.bind(str(sock))
    holder.listen()
    assert step() == "resumed2=-1:98"  # EADDRINUSE
    holder.close()
    step()
    proc.communicate(timeout=10)


class Clients:
    """Clients requesting over and over through the socket file, each request retried
    while the connection fails (as during a reload natively: refused, or reset from a
    listener that stopped) for up to RETRY seconds; a request that never gets an answer
    is a failure.  Bounded in requests and in time."""

    RETRY = 5.0

    def __init__(self, sock: Path, n: int = 2, limit: int = 20000,
                 seconds: float = 90.0) -> None:
        self.sock, self.limit, self.seconds = sock, limit, seconds
        self.answers: dict[str, int] = {}
        self.failures: list[str] = []
        self.retried = 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.loop) for _ in range(n)]
        for t in self.threads:
            t.start()

    def request(self) -> str:
        return unix_get(self.sock, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", timeout=5).decode()

    def loop(self) -> None:
        end = time.monotonic() + self.seconds
        for _ in range(self.limit):
            if self.stopping.is_set() or time.monotonic() > end:
                return
            give_up = time.monotonic() + self.RETRY
            while True:
                try:
                    reply = self.request()
                    body = reply.rpartition("\r\n\r\n")[2].strip()
                    if not reply.startswith("HTTP/1.") or not body:
                        raise ConnectionResetError(f"bad reply {reply!r}")
                    break
                except OSError as e:
                    if time.monotonic() > give_up:
                        with self.lock:
                            self.failures.append(repr(e))
                        body = ""
                        break
                    with self.lock:
                        self.retried += 1
                    time.sleep(0.01)
            if body:
                with self.lock:
                    self.answers[body] = self.answers.get(body, 0) + 1
            time.sleep(0.002)  # the limit outlasts a slow reload

    def seen(self, body: str) -> int:
        with self.lock:
            return self.answers.get(body, 0)

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=30)


HAPROXY_CONFIG = """\
global
    stats socket {stats} mode 600 level admin expose-fd listeners
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend fe
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string "{answer}"
"""


def haproxy_config(path: Path, sockdir: Path, port: int, answer: str, extra: str = "") -> Path:
    path.write_text(HAPROXY_CONFIG.format(stats=sockdir / "stats.sock", port=port,
                                          answer=answer) + extra)
    return path


def settle(clients: Clients, answer: str, at_least: int = 20) -> None:
    """Clients get answer, and go on getting it for a while."""
    start = clients.seen(answer)
    wait_for(lambda: clients.seen(answer) >= start + at_least, 30, f"answers {answer!r}")


@pytest.fixture
def haproxy() -> str:
    return require_tool("haproxy")


class Serving(NamedTuple):
    port: int
    sock: Path
    rules: list[str]
    config: Path
    proc: subprocess.Popen[str]
    clients: Clients


@contextlib.contextmanager
def haproxy_serving(procs: Processes, sockdir: Path, haproxy: str,
                    *flags: str) -> Iterator[Serving]:
    """A wrapped haproxy answering "one", with clients looping until the end."""
    port, sock = free_port(), sockdir / "web.sock"
    rules = [f"in,addr=127.0.0.1,port={port},path={sock}"]
    config = haproxy_config(sockdir / "haproxy.cfg", sockdir, port, "one")
    proc = procs.wrapped(rules, [haproxy, *flags, "-db", "-f", str(config)])
    wait_for_socket(sock)
    clients = Clients(sock)
    try:
        settle(clients, "one")
        yield Serving(port, sock, rules, config, proc, clients)
    finally:
        clients.stop()


@pytest.mark.parametrize("transfer", [False, True], ids=["bind", "transfer"])
def test_haproxy_reload(procs: Processes, sockdir: Path, haproxy: str,
                        transfer: bool) -> None:
    """haproxy -sf: the new process binds (pausing the old one while the path is
    taken) or, with -x, takes the listener over from the old one through its stats
    socket; clients never miss an answer, and the file stays."""
    with haproxy_serving(procs, sockdir, haproxy) as old:
        new = procs.wrapped(old.rules, [
            haproxy, "-db", "-f",
            str(haproxy_config(sockdir / "2.cfg", sockdir, old.port, "two")),
            "-sf", str(old.proc.pid),
            *(["-x", str(sockdir / "stats.sock")] if transfer else [])])
        settle(old.clients, "two")
        old.proc.communicate(timeout=30)
        settle(old.clients, "two")
    assert not old.clients.failures, old.clients.failures[:5]
    assert new.poll() is None, new.communicate(timeout=5)
    assert old.sock.exists()


def test_haproxy_reload_with_failing_config(procs: Processes, sockdir: Path,
                                            haproxy: str) -> None:
    """A new configuration that cannot bind one of its addresses: the new process pauses
    the old one (connect AF_UNSPEC), fails, and resumes it (listen); the old one goes on
    serving.  Before, the old one refused to pause, stopped, and nothing listened."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    extra = (f"frontend other\n    bind 127.0.0.1:{taken.getsockname()[1]}\n"
             "    http-request return status 200 content-type text/plain string \"x\"\n")
    with haproxy_serving(procs, sockdir, haproxy) as old, taken:
        bad = procs.wrapped(old.rules, [
            haproxy, "-db", "-f",
            str(haproxy_config(sockdir / "2.cfg", sockdir, old.port, "two", extra)),
            "-sf", str(old.proc.pid)])
        _, err = bad.communicate(timeout=60)
        assert bad.returncode != 0 and "Address already in use" in err, err
        settle(old.clients, "one")
    assert not old.clients.failures, old.clients.failures[:5]
    assert old.proc.poll() is None, old.proc.communicate(timeout=5)
    assert old.sock.exists()
    assert old.clients.seen("two") == 0


def test_haproxy_master_worker_reload(procs: Processes, sockdir: Path, haproxy: str) -> None:
    """haproxy -W reloads on SIGUSR2: the master executes itself again and takes the
    listeners from the old worker over SCM_RIGHTS.  Before, it did not recognise them,
    bound again, failed with EADDRINUSE, and everything exited."""
    with haproxy_serving(procs, sockdir, haproxy, "-W") as site:
        haproxy_config(site.config, sockdir, site.port, "two")
        try:
            for _ in range(5):  # a master still starting drops the signal (haproxy's race)
                site.proc.send_signal(signal.SIGUSR2)
                with contextlib.suppress(AssertionError):
                    wait_for(lambda: site.clients.seen("two") > 0, 5)
                    break
            settle(site.clients, "two")
            settle(site.clients, "two")
        except AssertionError:
            os.killpg(site.proc.pid, signal.SIGTERM)
            raise AssertionError(site.proc.communicate(timeout=10)) from None
    assert site.proc.poll() is None, site.proc.communicate(timeout=5)
    assert not site.clients.failures, site.clients.failures[:5]
    assert site.sock.exists()


NODE_CLUSTER = """\
const cluster = require('cluster');
const http = require('http');
const [host, port] = [process.argv[2], +process.argv[3]];
if (cluster.isPrimary) {
  let ready = 0;
  for (let i = 0; i < 2; i++)
    cluster.fork().on('listening', () => { if (++ready === 2) console.log('ready'); });
} else {
  http.createServer((req, res) => {
    const s = req.socket;
    console.log(`pid=${process.pid} remote=${s.remoteAddress} family=${s.remoteFamily} ` +
                `port=${s.remotePort} local=${s.localAddress}:${s.localPort}`);
    res.end('ok');
  }).listen(port, host);
}
"""


@pytest.mark.parametrize("policy", ["rr", "none"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_node_cluster_remote_address(procs: Processes, sockdir: Path, tmp_path: Path,
                                     policy: str, host: str) -> None:
    """Node's cluster: by default the primary accepts and hands each connection to a
    worker over SCM_RIGHTS; with SCHED_NONE it hands over the listener.  Workers log a
    loopback client of the listener's family, each with a port of its own."""
    node = require_tool("node")
    port, sock = free_port(), sockdir / "web.sock"
    script = tmp_path / "cluster.js"
    script.write_text(NODE_CLUSTER)
    proc = procs.wrapped([f"in,addr={host},port={port},path={sock}"],
                         [node, str(script), host, str(port)],
                         env={**os.environ, "NODE_CLUSTER_SCHED_POLICY": policy})
    read_until(proc, "ready")
    for _ in range(8):
        assert unix_get(sock, b"GET / HTTP/1.0\r\n\r\n").endswith(b"ok")
    time.sleep(0.3)  # the workers' log lines reach the primary's stdout
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    lines = [dict(kv.split("=", 1) for kv in line.split()) for line in out.splitlines()
             if line.startswith("pid=")]
    assert len(lines) == 8, (out, err)
    family = "IPv6" if ":" in host else "IPv4"
    for line in lines:
        assert line["remote"] == host and line["family"] == family, line
        assert int(line["port"]) in EPHEMERAL, line
        assert line["local"] == f"{host}:{port}", line
    assert len({line["port"] for line in lines}) == 8, lines


FORKED_SERVER = """\
import os, socket, sys, time
port, workers = int(sys.argv[1]), 3
s = socket.socket()
s.bind(("127.0.0.1", port))
s.listen(64)
for _ in range(workers):
    if os.fork() == 0:
        while True:
            c, peer = s.accept()
            c.sendall(f"{os.getpid()} {peer[0]} {peer[1]}\\n".encode())
            c.close()
            time.sleep(0.05)  # let the others take the next clients
print("ready", flush=True)
os.wait()
"""


def test_forked_workers_number_clients_apart(procs: Processes, sockdir: Path) -> None:
    """Workers forked after the listener was converted (gunicorn, php -S, prefork
    servers): the client ports they report are all different.  Before, each worker
    numbered its clients from 32768."""
    port, sock = free_port(), sockdir / "web.sock"
    proc = procs.wrapped([f"in,addr=127.0.0.1,port={port},path={sock}"],
                         [sys.executable, "-c", FORKED_SERVER, str(port)])
    read_until(proc, "ready")
    replies = [unix_get(sock, b"").decode().split() for _ in range(24)]
    pids = {r[0] for r in replies}
    ports = [r[2] for r in replies]
    assert len(pids) >= 2, "one worker took every client: the test proves nothing"
    assert all(r[1] == "127.0.0.1" for r in replies)
    assert len(set(ports)) == len(ports), replies


def test_received_by_recvmmsg(procs: Processes, sockdir: Path, helper_dir: Path) -> None:
    receiver = compile_c(HELPERS / "recvmmsg.c", helper_dir / "recvmmsg")
    port, sock, channel = free_port(), sockdir / "l.sock", sockdir / "channel"
    rules = [f"in,addr=127.0.0.1,port={port},path={sock}"]
    procs.wrapped(rules, [sys.executable, PASSFD, "send", str(channel), "listener",
                          "127.0.0.1", str(port)])
    wait_for_socket(channel)
    out = run_wrapped(rules, [str(receiver), str(channel)])
    assert out.stdout == f"family={socket.AF_INET} address=127.0.0.1 port={port}\n", out
