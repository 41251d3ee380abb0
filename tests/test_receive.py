"""receive= rules: unmodified TCP servers take connections a dispatcher passes them
(protocol A: a Unix datagram receiver; protocol B: a slot registered at a control socket).

The dispatcher here is a minimal one written in the test: it accepts real TCP
connections on loopback and passes each with SCM_RIGHTS, so the servers must report the
clients' real addresses (each client connects from its own 127.0.0.x address)."""

from __future__ import annotations

import array
import os
import re
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    HELPERS,
    Processes,
    activate,
    compile_c,
    free_port,
    read_until,
    require_tool,
    run_wrapped,
    tcp_port_open,
    unixify_command,
    wait_for,
)

from unixify.encoding import encode_rule
from unixify.rules import RuleError, parse_rule


def pass_fds(receiver: str | socket.socket, fds: list[int], data: bytes = b"\0") -> None:
    """One protocol A message (or B, on a connected socket) carrying fds."""
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    if isinstance(receiver, socket.socket):
        receiver.sendmsg([data], rights if fds else [])
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
        out.sendmsg([data], rights if fds else [], 0, receiver)


class Sender:
    """A dispatcher in miniature: accepts TCP connections on 127.0.0.1 and passes each to
    a receiver path (protocol A) or a registered seqpacket peer (protocol B)."""

    def __init__(self, to: str | socket.socket, data: bytes = b"\0") -> None:
        self.to = to  # a test may point it elsewhere (a restarted dispatcher)
        self.data = data
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                pass_fds(self.to, [conn.fileno()], self.data)
            except OSError as err:
                self.errors.append(err)
            conn.close()

    def close(self) -> None:
        self.listener.close()


def client(port: int, source: str, request: bytes, timeout: float = 20,
           shut: bool = False) -> tuple[str, bytes]:
    """Connect from source (a 127.x address); send request (then end our side if shut);
    the response and our address as 'ip:port'."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                  source_address=(source, 0)) as conn:
        me = conn.getsockname()
        conn.sendall(request)
        if shut:
            conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return f"{me[0]}:{me[1]}", data


def test_receive_rule_parses_and_encodes() -> None:
    rule = parse_rule("in,port=443,receive=/run/u/www.sock,mode=0660")
    assert rule.action == "receive" and rule.mode == 0o660
    assert "E" in encode_rule(rule) and "/run/u/www.sock" in encode_rule(rule)
    slotted = parse_rule("in,tcp,receive=/run/u/control.sock,slot=7")
    assert slotted.numbers == (7,) and "v1:7" in encode_rule(slotted)
    for bad, what in (("out,receive=/x", "'in' only"), ("udp,receive=/x", "'udp'"),
                      ("receive=/x,slot=1,mode=0600", "makes none"),
                      ("path=/x,slot=3", "needs a 'receive='"),
                      ("receive=/x,slot=-1", "slot '-1'"), ("receive=", "needs a value")):
        with pytest.raises(RuleError, match=re.escape(what)):
            parse_rule(bad)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("receiver") / "receiver"
    return str(compile_c(HELPERS / "receiver.c", out))


def lines(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        found.setdefault(key, []).append(value)
    return found


def test_http_server_sees_real_clients(procs: Processes, sockdir: Path) -> None:
    """python http.server wrapped with receive=: no TCP port, a 0660 datagram receiver,
    and its log names each client's real address."""
    port = free_port()
    path = str(sockdir / "www.sock")
    server = procs.wrapped([f"in,port={port},receive={path},mode=0660"],
                           ["python3", "-u", "-m", "http.server", str(port),
                            "--bind", "127.0.0.1", "--directory", str(sockdir)])
    wait_for(lambda: os.path.exists(path), what="the receiver")
    info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        probe.connect(path)  # a datagram socket: a stream server would refuse this
    assert not tcp_port_open(port)
    sender = Sender(path)
    seen = []
    for i in (7, 8, 9):
        me, response = client(sender.port, f"127.0.0.{i}", b"GET / HTTP/1.0\r\n\r\n")
        assert response.startswith(b"HTTP/1.0 200"), response[:200]
        seen.append(me.split(":")[0])
    sender.close()
    server.terminate()
    out, err = server.communicate(timeout=10)
    logged = re.findall(r'^(\S+) - - \[.*"GET / HTTP/1.0" 200', err, re.M)
    assert logged == seen, err
    # its getsockname is the address it bound (socketbox's preload printed garbage)
    assert f"Serving HTTP on 127.0.0.1 port {port} " in out
    assert not sender.errors


def nginx_config(tmp: Path, port: int, workers: int) -> Path:
    (tmp / "www").mkdir()
    (tmp / "www" / "index.html").write_text("hello from nginx\n")
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes {workers};
daemon off;
pid {tmp}/nginx.pid;
error_log stderr info;
events {{ worker_connections 64; }}
http {{
    log_format peer '$remote_addr:$remote_port $status';
    access_log {tmp}/access.log peer;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
    }}
}}
""")
    return conf


def nginx_workers(master: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True,
                         text=True, timeout=10).stdout
    return [int(p) for p in out.split()]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_nginx_prefork_workers_share_a_receiver(procs: Processes, sockdir: Path) -> None:
    """nginx, master and two workers, behind one receiver: every request is served once,
    the access log has each client's real address and port, and no worker keeps a
    passed socket after its connection ends."""
    nginx = require_tool("nginx")
    port = free_port()
    path = str(sockdir / "nginx.sock")
    conf = nginx_config(sockdir, port, 2)
    server = procs.wrapped([f"in,port={port},receive={path}"], [nginx, "-c", str(conf)])
    wait_for(lambda: os.path.exists(path), what="nginx's receiver")
    wait_for(lambda: len(nginx_workers(server.pid)) == 2, what="two nginx workers")
    assert not tcp_port_open(port)
    workers = nginx_workers(server.pid)
    sender = Sender(path)
    client(sender.port, "127.0.0.2", b"GET / HTTP/1.0\r\n\r\n")  # warm up (log files open)
    before = {pid: open_fds(pid) for pid in workers}
    clients = []
    for i in range(20):
        me, response = client(sender.port, f"127.0.0.{10 + i}", b"GET / HTTP/1.0\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 200") and b"hello from nginx" in response
        clients.append(me)
    wait_for(lambda: {pid: open_fds(pid) for pid in workers} == before, 5,
             "the workers back to their fds before the connections")
    sender.close()
    log = (sockdir / "access.log").read_text().split("\n")
    logged = [line.split()[0] for line in log if line][1:]
    assert logged == clients
    assert not sender.errors


def test_nonblocking_epoll_select_and_mapped_peers(procs: Processes, sockdir: Path,
                                                    receiver: str) -> None:
    """A C server on AF_INET6 [::]:PORT: it sees a TCP listener (getsockname, SO_TYPE,
    SO_DOMAIN, SO_ACCEPTCONN), EAGAIN with nothing queued, connections under epoll and
    select with accept4's flags honoured, IPv4 peers as IPv4-mapped."""
    port = free_port()
    path = str(sockdir / "c.sock")
    server = procs.wrapped([f"in,receive={path}"], [receiver, "6", str(port), "2"])
    text = read_until(server, "ready")
    got = lines(text)
    assert got["bound_acceptconn"] == ["0"]
    assert got["sockname"] == [f"{socket.AF_INET6},::,{port}"]
    assert f"type={socket.SOCK_STREAM} domain={socket.AF_INET6} acceptconn=1" in text
    assert got["empty"] == ["-1,11"]  # EAGAIN
    assert got["badflags"] == ["22"]  # EINVAL
    sender = Sender(path)
    first, reply = client(sender.port, "127.0.0.3", b"")
    assert reply == b"hello 1\n"
    second, reply = client(sender.port, "127.0.0.4", b"")
    assert reply == b"hello 2\n"
    out, _ = server.communicate(timeout=20)
    got = lines(text + out)
    ip1, port1 = first.split(":")
    ip2, port2 = second.split(":")
    assert got["peer"] == [f"{socket.AF_INET6},::ffff:{ip1},{port1}",
                           f"{socket.AF_INET6},::ffff:{ip2},{port2}"]
    # the passed socket itself is the real TCP socket: an AF_INET one, never spoofed
    assert got["getpeername"] == [f"{socket.AF_INET},{ip1},{port1}",
                                  f"{socket.AF_INET},{ip2},{port2}"]
    assert got["addrlen"] == ["28", "28"]
    assert got["flags"] == ["nonblock,cloexec", "block,inherit"]
    assert got["conn_type"] == [f"{socket.SOCK_STREAM},{socket.AF_INET}"] * 2
    assert "done" in out
    sender.close()


def test_ipv4_listener_gets_plain_ipv4_and_never_an_ipv6_client(procs: Processes,
                                                               sockdir: Path,
                                                               receiver: str) -> None:
    """An AF_INET listener: an IPv6 client cannot be reported to it, so that connection
    is closed and skipped; the next (IPv4) one is delivered as plain IPv4."""
    port = free_port()
    path = str(sockdir / "c4.sock")
    server = procs.wrapped([f"in,port={port},receive={path}"], [receiver, "4", str(port), "1"])
    read_until(server, "ready")
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as lst6, \
            socket.create_connection(("::1", lst6.getsockname()[1]), timeout=10) as c6:
        conn6, _ = lst6.accept()
        pass_fds(path, [conn6.fileno()])
        conn6.close()
        c6.settimeout(10)
        assert c6.recv(100) == b""  # closed by the receiver, not served
    sender = Sender(path)
    me, reply = client(sender.port, "127.0.0.5", b"")
    assert reply == b"hello 1\n"
    out, err = server.communicate(timeout=20)
    ip, cport = me.split(":")
    assert lines(out)["peer"] == [f"{socket.AF_INET},{ip},{cport}"]
    assert "IPv6 client cannot be reported" in err
    sender.close()


def closed_by_receiver(read_end: int) -> bool:
    """The write end of this pipe, passed to the receiver, was closed there."""
    os.set_blocking(read_end, False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if os.read(read_end, 10) == b"":
                return True
        except BlockingIOError:
            time.sleep(0.05)
    return False


def test_non_tcp_fds_are_closed_and_skipped(procs: Processes, sockdir: Path,
                                            receiver: str) -> None:
    """A pipe, a UDP socket, a listening TCP socket, two fds in one message, a message
    without any, ten fds (cut by the kernel): each closed and skipped; the real
    connection after them is served."""
    port = free_port()
    path = str(sockdir / "junk.sock")
    server = procs.wrapped([f"in,port={port},receive={path}"], [receiver, "6", str(port), "1"])
    read_until(server, "ready")
    pipes = [os.pipe() for _ in range(14)]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp_listener = socket.create_server(("127.0.0.1", 0))
    pass_fds(path, [pipes[0][1]])
    pass_fds(path, [udp.fileno()])
    pass_fds(path, [tcp_listener.fileno()])
    pass_fds(path, [pipes[1][1], pipes[2][1]])
    pass_fds(path, [])
    pass_fds(path, [pipes[3][1]], data=b"\0" * 3)
    pass_fds(path, [w for _, w in pipes[4:]])  # ten: more than fit (MSG_CTRUNC)
    for _, write_end in pipes:
        os.close(write_end)
    udp.close()
    tcp_listener.close()
    sender = Sender(path)
    _, reply = client(sender.port, "127.0.0.6", b"")
    assert reply == b"hello 1\n"
    for read_end, _ in pipes:
        assert closed_by_receiver(read_end)
        os.close(read_end)
    out, err = server.communicate(timeout=20)
    assert "done" in out and len(lines(out)["peer"]) == 1
    assert "passed to the receiver; closed" in err
    sender.close()


def bind_script(socket_args: str, address: str) -> str:
    """Python that binds and listens (or tries), printing 'bound' or 'errno N'."""
    return ("import socket\n"
            f"s = socket.socket({socket_args})\n"
            f"try:\n    s.bind({address}); print('bound'); s.listen()\n"
            "except OSError as e:\n    print('errno', e.errno)\n")


def test_receiver_file_handling(sockdir: Path) -> None:
    """A stale receiver file is replaced; a live one is never taken (EADDRINUSE)."""
    path = sockdir / "r.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(path))
    stale.close()
    code = bind_script("socket.AF_INET6", "('::', 9)")
    done = run_wrapped([f"in,receive={path}"], ["python3", "-c", code + "s.close()"])
    assert done.stdout.strip() == "bound", done.stderr
    live = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path.unlink(missing_ok=True)
    live.bind(str(path))
    try:
        done = run_wrapped([f"in,receive={path}"], ["python3", "-c", code])
        assert done.stdout.strip() == "errno 98", done.stderr
        assert os.path.exists(path)
    finally:
        live.close()


REGISTERED = b"\x80\0\0\0"
CONNECTION = b"\3\0\0\0"


class Control:
    """A protocol B dispatcher's control socket in miniature: accepts registrations
    (answering REGISTERED unless the slot is taken) and keeps the registered peers."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(path)
        self.sock.listen()
        self.slots: dict[int, socket.socket] = {}
        self.requests: list[bytes] = []
        self.registered = threading.Event()
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
                request = conn.recv(64)
            except OSError:
                return
            self.requests.append(request)
            slot = int.from_bytes(request[4:8], "big")
            if request[:4] != b"\1\0\0\0" or len(request) != 8 or slot in self.slots:
                conn.send(b"\x81\0\0\0")
                conn.close()
                continue
            conn.send(REGISTERED)
            self.slots[slot] = conn
            self.registered.set()

    def stop(self) -> None:
        """The dispatcher goes away: its listener and every registration."""
        self.sock.close()
        for conn in self.slots.values():
            conn.close()
        os.unlink(self.path)


def test_slot_receiver_serves_and_survives_a_dispatcher_restart(procs: Processes,
                                                                sockdir: Path) -> None:
    """http.server with receive=CONTROL,slot=7 registers slot 7 (protocol B), serves
    the connections passed to it, and registers again on its own when the dispatcher
    restarts; it is never killed."""
    port = free_port()
    path = str(sockdir / "control.sock")
    control = Control(path)
    server = procs.wrapped([f"in,port={port},receive={path},slot=7"],
                           ["python3", "-u", "-m", "http.server", str(port),
                            "--bind", "127.0.0.1", "--directory", str(sockdir)])
    assert control.registered.wait(20), server.stderr
    assert control.requests == [b"\1\0\0\0\0\0\0\7"]
    assert not tcp_port_open(port)
    sender = Sender(control.slots[7], CONNECTION)
    me, response = client(sender.port, "127.0.0.11", b"GET / HTTP/1.0\r\n\r\n")
    assert response.startswith(b"HTTP/1.0 200")
    control.stop()
    time.sleep(1.5)  # the server finds its dispatcher gone and waits for it
    assert server.poll() is None
    control = Control(path)
    assert control.registered.wait(20), "the receiver did not register again"
    sender.to = control.slots[7]
    me2, response = client(sender.port, "127.0.0.12", b"GET / HTTP/1.0\r\n\r\n")
    assert response.startswith(b"HTTP/1.0 200")
    assert server.poll() is None
    server.terminate()
    _, err = server.communicate(timeout=10)
    logged = re.findall(r'^(\S+) - - \[.*"GET / HTTP/1.0" 200', err, re.M)
    assert logged == [me.split(":")[0], me2.split(":")[0]], err
    assert "registered slot 7" in err and "again" in err
    sender.close()
    control.stop()


def test_nonblocking_slot_receiver_waits_without_spinning(procs: Processes, sockdir: Path,
                                                         receiver: str) -> None:
    """A non-blocking receiver under epoll whose dispatcher is gone gets EAGAIN, and its
    fd turns readable again about once a second (no busy loop) until the dispatcher is
    back; then it takes connections again through the same epoll registration."""
    port = free_port()
    path = str(sockdir / "control.sock")
    control = Control(path)
    server = procs.wrapped([f"in,receive={path},slot=3"], [receiver, "6", str(port), "3"])
    read_until(server, "ready")
    assert control.registered.wait(20)
    sender = Sender(control.slots[3], CONNECTION)
    assert client(sender.port, "127.0.0.13", b"")[1] == b"hello 1\n"
    assert client(sender.port, "127.0.0.14", b"")[1] == b"hello 2\n"
    control.stop()
    time.sleep(3)
    control = Control(path)
    assert control.registered.wait(20), "the receiver did not register again"
    sender.to = control.slots[3]
    assert client(sender.port, "127.0.0.15", b"")[1] == b"hello 3\n"
    out, _ = server.communicate(timeout=20)
    waits = lines(out).get("accept", [])
    assert waits and set(waits) == {"11"} and len(waits) <= 6, out  # EAGAIN, ~1 a second
    assert "done" in out
    sender.close()
    control.stop()


def test_slot_registration_refused_or_absent_fails_the_bind(sockdir: Path) -> None:
    """No dispatcher, or one that refuses the slot: the bind fails, visibly."""
    path = str(sockdir / "control.sock")
    code = bind_script("socket.AF_INET6", "('::', 9)")
    done = run_wrapped([f"in,receive={path},slot=1"], ["python3", "-c", code])
    assert done.stdout.strip() == "errno 2" and "cannot register slot 1" in done.stderr
    control = Control(path)
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    holder.connect(path)
    holder.send(b"\1\0\0\0\0\0\0\1")
    assert holder.recv(8) == REGISTERED
    done = run_wrapped([f"in,receive={path},slot=1"], ["python3", "-c", code])
    assert done.stdout.strip() == "errno 13", done.stderr
    holder.close()
    control.stop()


def test_systemd_datagram_socket_becomes_a_receiver(procs: Processes, sockdir: Path) -> None:
    """A Unix datagram socket passed by socket activation to a 'systemd' rule of a TCP
    listener is a receiver: made before the server starts, only its fd passed in."""
    port = free_port()
    path = str(sockdir / "activated.sock")
    server = activate(procs, [path], [f"in,tcp,port={port},systemd"],
                      ["python3", "-u", "-m", "http.server", str(port), "--bind", "127.0.0.1",
                       "--directory", str(sockdir)], extra=["--datagram"])
    wait_for(lambda: os.path.exists(path), what="the activation socket")
    sender = Sender(path)
    # systemd-socket-activate starts the server at the first datagram: this connection
    me, response = client(sender.port, "127.0.0.21", b"GET / HTTP/1.0\r\n\r\n")
    assert response.startswith(b"HTTP/1.0 200")
    me2, response = client(sender.port, "127.0.0.22", b"GET / HTTP/1.0\r\n\r\n")
    assert response.startswith(b"HTTP/1.0 200")
    assert not tcp_port_open(port)
    server.terminate()
    _, err = server.communicate(timeout=10)
    logged = re.findall(r'^(\S+) - - \[.*"GET / HTTP/1.0" 200', err, re.M)
    assert logged == [me.split(":")[0], me2.split(":")[0]], err
    sender.close()


def children_of(pid: int) -> list[str]:
    """Child processes of pid, zombies included."""
    out = subprocess.run(["ps", "-o", "pid=,stat=", "--ppid", str(pid)], capture_output=True,
                         text=True, timeout=10).stdout
    return out.split("\n")[:-1]


def test_inetd_runs_a_program_per_connection_with_ucspi_variables(procs: Processes,
                                                                   sockdir: Path) -> None:
    """unixify inetd: the program's stdin and stdout are the passed TCP socket and it
    knows the client's real address; cat echoes."""
    path = str(sockdir / "inetd.sock")
    inetd = procs.start([*unixify_command(), "inetd", "--receive", path, "--", "sh", "-c",
                         'echo "$TCPREMOTEIP $TCPREMOTEPORT $TCPLOCALIP $TCPLOCALPORT"; '
                         "exec cat"])
    wait_for(lambda: os.path.exists(path), what="inetd's receiver")
    sender = Sender(path)
    me, reply = client(sender.port, "127.0.0.31", b"", shut=True)
    with socket.create_connection(("127.0.0.1", sender.port), timeout=20,
                                  source_address=("127.0.0.32", 0)) as conn:
        ip, port = conn.getsockname()
        conn.sendall(b"echo me\n")
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(1000):
            data += chunk
    assert reply.decode() == f"{me.replace(':', ' ')} 127.0.0.1 {sender.port}\n"
    assert data.decode() == f"{ip} {port} 127.0.0.1 {sender.port}\necho me\n"
    wait_for(lambda: not children_of(inetd.pid), what="the children reaped")
    inetd.terminate()
    assert inetd.wait(timeout=10) == 0
    assert not os.path.exists(path)
    sender.close()


def test_inetd_caps_children_and_leaves_the_rest_queued(procs: Processes,
                                                        sockdir: Path) -> None:
    """--max-children 1: while one child runs, the next connection stays queued in the
    receiver (not received, not spawned); it is served when the first ends."""
    path = str(sockdir / "capped.sock")
    inetd = procs.start([*unixify_command(), "inetd", "--max-children", "1", "--receive",
                         path, "--", "sh", "-c", 'echo "$TCPREMOTEIP"; exec cat'])
    wait_for(lambda: os.path.exists(path), what="inetd's receiver")
    sender = Sender(path)
    first = socket.create_connection(("127.0.0.1", sender.port), timeout=20,
                                     source_address=("127.0.0.41", 0))
    assert first.recv(100) == b"127.0.0.41\n"
    second = socket.create_connection(("127.0.0.1", sender.port), timeout=20,
                                      source_address=("127.0.0.42", 0))
    second.settimeout(1.5)
    with pytest.raises(TimeoutError):
        second.recv(100)  # queued: no child for it yet
    first.close()  # cat ends, the child exits, the next connection is received
    second.settimeout(20)
    assert second.recv(100) == b"127.0.0.42\n"
    second.close()
    inetd.send_signal(2)
    assert inetd.wait(timeout=10) == 0
    sender.close()


def test_inetd_slot_and_bad_arguments(procs: Processes, sockdir: Path) -> None:
    """--slot registers at a control socket, and registers again when the dispatcher
    comes back (not killed meanwhile); bad arguments are one line and exit 2."""
    path = str(sockdir / "control.sock")
    control = Control(path)
    inetd = procs.start([*unixify_command(), "inetd", "--receive", path, "--slot", "9",
                         "--", "sh", "-c", 'echo "$TCPREMOTEIP"'])
    assert control.registered.wait(20)
    sender = Sender(control.slots[9], CONNECTION)
    assert client(sender.port, "127.0.0.51", b"")[1] == b"127.0.0.51\n"
    control.stop()
    time.sleep(1.5)  # it finds its dispatcher gone and waits for it
    assert inetd.poll() is None
    control = Control(path)
    assert control.registered.wait(20), "inetd did not register again"
    sender.to = control.slots[9]
    assert client(sender.port, "127.0.0.52", b"")[1] == b"127.0.0.52\n"
    inetd.terminate()
    _, err = inetd.communicate(timeout=10)
    assert inetd.returncode == 0 and "registered slot 9" in err and "again" in err, err
    sender.close()
    control.stop()
    for args, text in ((["--", "cat"], "--receive PATH is required"),
                       (["--receive", path, "--slot", "x", "--", "cat"], "--slot 'x'"),
                       (["--receive", path, "--max-children", "0", "--", "cat"],
                        "--max-children '0'"),
                       (["--receive", path], "no program"),
                       (["--bogus"], "bogus")):
        done = subprocess.run([*unixify_command(), "inetd", *args], capture_output=True,
                              text=True, timeout=20)
        assert done.returncode == 2 and text in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1


def test_udp_bind_under_receive_rule_fails_closed_and_explain_says_so(sockdir: Path) -> None:
    """receive= takes TCP only: a UDP bind it matches fails (EPROTOTYPE), no port opens,
    and explain tells both cases."""
    path = str(sockdir / "r.sock")
    code = bind_script("socket.AF_INET, socket.SOCK_DGRAM", "('127.0.0.1', 0)")
    done = run_wrapped([f"in,receive={path}"], ["python3", "-c", code])
    assert done.stdout.strip() == "errno 91" and "takes TCP connections" in done.stderr
    base = [*unixify_command(), "explain", "-r", f"in,port=443,receive={path},mode=0600"]
    out = subprocess.run([*base, "in", "tcp", "10.0.0.1", "443"], capture_output=True,
                         text=True, timeout=20).stdout
    assert f"makes a receiver (Unix datagram socket) at {path} (mode 0600)" in out
    out = subprocess.run([*base, "in", "udp", "10.0.0.1", "443"], capture_output=True,
                         text=True, timeout=20).stdout
    assert "fails with EPROTOTYPE" in out


def test_receiver_survives_exec(procs: Processes, sockdir: Path) -> None:
    """A server that re-executes itself keeps its receiver: the new image sees its TCP
    listener and accepts the passed connections with their real peers."""
    path = str(sockdir / "exec.sock")
    child = ("import socket, sys\n"
             "s = socket.socket(fileno=int(sys.argv[1]))\n"
             "print(s.family == socket.AF_INET6, s.type == socket.SOCK_STREAM, "
             "s.getsockname()[:2], flush=True)\n"
             "c, peer = s.accept()\n"
             "c.sendall(repr(peer[:2]).encode()); c.close()\n")
    parent = ("import os, socket, sys\n"
              "s = socket.socket(socket.AF_INET6); s.bind(('::', 9)); s.listen()\n"
              "s.set_inheritable(True)\n"
              "os.execv(sys.executable, [sys.executable, '-c', sys.argv[1], "
              "str(s.fileno())])\n")
    server = procs.wrapped([f"in,receive={path}"], ["python3", "-c", parent, child])
    assert read_until(server, "True True ('::', 9)")
    sender = Sender(path)
    me, reply = client(sender.port, "127.0.0.61", b"")
    ip, port = me.split(":")
    assert reply.decode() == repr((f"::ffff:{ip}", int(port)))
    _, err = server.communicate(timeout=10)
    assert "ignored" not in err
    assert not os.path.exists(path)  # the new image removed it at exit
    sender.close()


def test_receiver_file_permissions(procs: Processes, sockdir: Path) -> None:
    """--mode and owner=/group= apply to a receiver's file as to a path= one."""
    path = sockdir / "perm.sock"
    code = ("import socket, time\n"
            "s = socket.socket(socket.AF_INET); s.bind(('127.0.0.1', 9)); s.listen()\n"
            "print('bound', flush=True); time.sleep(30)\n")
    server = procs.start([*unixify_command(), "--mode", "0640", "-r",
                          f"in,receive={path},owner=65534,group=65534", "python3", "-c", code])
    read_until(server, "bound")
    info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o640
    assert (info.st_uid, info.st_gid) == (65534, 65534)


def test_shutdown_wakes_accept_with_einval(sockdir: Path) -> None:
    """shutdown() of a receiver wakes a thread blocked in accept(), which fails with
    EINVAL as on a TCP listener (protocol A and B), instead of reading on or
    registering again."""
    control_path = str(sockdir / "control.sock")
    control = Control(control_path)
    code = ("import socket, threading, time\n"
            "s = socket.socket(socket.AF_INET6); s.bind(('::', 9)); s.listen()\n"
            "result = []\n"
            "def take():\n"
            "    try:\n        s.accept(); result.append('accepted')\n"
            "    except OSError as e:\n        result.append(e.errno)\n"
            "t = threading.Thread(target=take); t.start(); time.sleep(0.3)\n"
            "s.shutdown(socket.SHUT_RDWR); t.join(10)\n"
            "print(result, s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))\n")
    for rule in (f"in,receive={sockdir / 'a.sock'}", f"in,receive={control_path},slot=4"):
        done = run_wrapped([rule], ["python3", "-c", code], timeout=20)
        assert done.stdout.strip() == "[22] 0", done.stderr
        assert "registering slot" not in done.stderr
    control.stop()
