"""Attacks on this round's additions, as another local user would make them: each test
failed before its fix."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    HELPERS,
    Processes,
    compile_c,
    free_port,
    read_until,
    run_wrapped,
    unixify_command,
    wait_for,
)
from test_receive import Sender, client, pass_fds


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/helpers/receiver.c: a TCP server that prints each client it accepts."""
    return str(compile_c(HELPERS / "receiver.c", tmp_path_factory.mktemp("rt") / "receiver"))


def test_inetd_survives_a_message_passing_a_pipe(procs: Processes, sockdir: Path) -> None:
    """Anyone who may write to inetd's receiver can pass any fd: a pipe (not a socket),
    a UDP socket, a TCP listener are closed with a log line, and inetd goes on serving
    (it exited before)."""
    path = str(sockdir / "inetd.sock")
    inetd = procs.start([*unixify_command(), "inetd", "--receive", path, "--", "sh", "-c",
                         'echo "$TCPREMOTEIP"'])
    wait_for(lambda: os.path.exists(path), what="inetd's receiver")
    r, w = os.pipe()
    a, b = socket.socketpair()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect(("127.0.0.1", 9))
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        pass_fds(path, [r])
        pass_fds(path, [w, a.fileno()])  # two fds, one not a socket
        pass_fds(path, [a.fileno()])  # a socket, but not TCP
        pass_fds(path, [udp.fileno()])  # an IP socket, but UDP
        pass_fds(path, [listener.fileno()])  # TCP, but not a connection
    finally:
        for fd in (r, w):
            os.close(fd)
        for sock in (a, b, udp, listener):
            sock.close()
    sender = Sender(path)
    assert client(sender.port, "127.0.0.61", b"")[1] == b"127.0.0.61\n"
    assert inetd.poll() is None
    inetd.terminate()
    assert inetd.wait(timeout=10) == 0
    sender.close()


# The client: one query, then (on a line on stdin) it reads what arrives and queries again.
UNCONNECTED_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"first", ("127.0.0.1", PORT))
print("sent", flush=True)
sys.stdin.readline()
s.settimeout(5)
seen = [s.recvfrom(100)[1] for _ in range(COUNT)]
s.sendto(b"second", ("127.0.0.1", PORT))
print(repr(seen), flush=True)
"""

# Another user: COUNT fresh autobound sockets each send to the client once, and then
# say how many datagrams they got back.
FLOOD = """
import socket, sys, time
to = bytes.fromhex(sys.argv[1])
socks = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("")
    s.sendto(b"junk", to)
    socks.append(s)
print("flooded", flush=True)
sys.stdin.readline()
time.sleep(0.5)
got = 0
for s in socks:
    s.setblocking(False)
    try:
        got += len(s.recv(100)) > 0
    except BlockingIOError:
        pass
print(got, flush=True)
"""


def as_nobody() -> None:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def test_stand_in_never_takes_a_converted_destination(procs: Processes,
                                                      sockdir: Path) -> None:
    """An unconnected UDP client's autobound address takes datagrams from anyone.  Each
    new sender gets a stand-in address (loopback, a port of a fixed sequence); one of
    them was 127.0.0.1 at the very port the client queries, so another user's socket
    took over that pairing: its datagram was reported as the server's reply and the
    client's next query went to it.  Now a stand-in never is an address a rule or the
    table already gives a destination."""
    count = 8  # under net.unix.max_dgram_qlen (10): the sends must not block
    # the 6th port the shim makes up in a fresh process (addr.c fake_port)
    port = 32768 + (5 * 7919) % (60999 - 32768 + 1)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sockdir / "srv.sock"))
    server.settimeout(20)
    os.chmod(sockdir, 0o755)
    code = UNCONNECTED_CLIENT.replace("PORT", str(port)).replace("COUNT", str(count))
    client = procs.wrapped([f"out,udp,addr=127.0.0.1,port={port},path={sockdir}/srv.sock"],
                           ["python3", "-c", code], stdin=subprocess.PIPE)
    assert client.stdout is not None and client.stdin is not None
    assert client.stdout.readline() == "sent\n"
    data, address = server.recvfrom(100)
    assert data == b"first" and isinstance(address, bytes) and address[:1] == b"\0"
    flood = procs.start(["python3", "-c", FLOOD, address.hex(), str(count)],
                        stdin=subprocess.PIPE, preexec_fn=as_nobody)
    assert flood.stdout is not None and flood.stdin is not None
    assert flood.stdout.readline() == "flooded\n"
    client.stdin.write("\n")
    client.stdin.flush()
    seen = client.stdout.readline()
    flood.stdin.write("\n")
    flood.stdin.flush()
    stolen = flood.stdout.readline()
    assert stolen == "0\n", "another user's socket got the client's query"
    assert seen.startswith("[") and f"('127.0.0.1', {port})" not in seen, seen
    assert server.recvfrom(100)[0] == b"second"
    server.close()


def lingering_connection() -> tuple[socket.socket, socket.socket]:
    """A TCP connection whose close would wait 30 s: data it cannot send (its peer, a
    listener that never accepts, reads nothing) and SO_LINGER.  The listener with it."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn.connect(listener.getsockname())
    conn.setblocking(False)
    for _ in range(10000):
        try:
            conn.send(b"x" * 65536)
        except BlockingIOError:
            break
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 30))
    return conn, listener


@contextlib.contextmanager
def passed_lingering(path: str) -> Iterator[None]:
    """Pass a lingering connection to the receiver at path with a pipe beside it (so it
    is rejected), keeping only the connection's peer while the body runs."""
    conn, listener = lingering_connection()
    r, w = os.pipe()
    with listener:
        try:
            with conn:
                pass_fds(path, [conn.fileno(), w])
            yield
        finally:
            os.close(r)
            os.close(w)


def test_receiver_closing_a_rejected_socket_does_not_wait(procs: Processes, sockdir: Path,
                                                          receiver: str) -> None:
    """Whoever may write to a receiver can pass a TCP socket set to linger on close; sent
    with a second fd it is rejected and closed inside accept(), which waited out its
    linger time (30 s) before: the next real connection was not served meanwhile."""
    port = free_port()
    path = str(sockdir / "linger.sock")
    server = procs.wrapped([f"in,port={port},receive={path}"], [receiver, "6", str(port), "1"])
    read_until(server, "ready")
    with passed_lingering(path):
        sender = Sender(path)
        _, reply = client(sender.port, "127.0.0.7", b"", timeout=10)
    assert reply == b"hello 1\n"
    sender.close()


def test_inetd_closing_a_rejected_socket_does_not_wait(procs: Processes,
                                                       sockdir: Path) -> None:
    """The same lingering socket passed to unixify inetd with a second fd: closed without
    waiting, and the next connection is served at once (it waited 30 s before)."""
    path = str(sockdir / "inetd.sock")
    inetd = procs.start([*unixify_command(), "inetd", "--receive", path, "--", "sh", "-c",
                         'echo "$TCPREMOTEIP"'])
    wait_for(lambda: os.path.exists(path), what="inetd's receiver")
    with passed_lingering(path):
        sender = Sender(path)
        assert client(sender.port, "127.0.0.62", b"", timeout=10)[1] == b"127.0.0.62\n"
    inetd.terminate()
    assert inetd.wait(timeout=10) == 0
    sender.close()


def test_getsockopt_odd_buffers_answer_as_a_real_socket(tmp_path: Path,
                                                        sockdir: Path) -> None:
    """Unset options of a converted socket, asked with a short, zero, negative or NULL
    buffer, answer as a real TCP socket beside it does: the IPv4 level gives one byte to
    a buffer shorter than an int, a negative length is EINVAL, a NULL buffer of length 0
    is fine.  Before, the converted socket gave 2 or 3 bytes, filled the buffer for a
    negative length and failed the NULL one with EFAULT."""
    probe = str(compile_c(HELPERS / "optlen.c", tmp_path / "optlen"))
    port, other = free_port(), free_port()
    done = run_wrapped([f"in,port={port},path={sockdir}/o.sock"], [probe, str(port), str(other)])
    assert done.returncode == 0, done.stdout + done.stderr


OWN_LISTENER = """
import socket
l = socket.socket(socket.AF_INET6); l.bind(("::", PORT)); l.listen()
for dest in ("::ffff:224.0.0.1", "::ffff:255.255.255.255", "ff02::1", "::1", "::ffff:127.0.0.1"):
    c = socket.socket(socket.AF_INET6); c.settimeout(5)
    try:
        c.connect((dest, PORT)); print(dest, "connected")
    except OSError as e:
        print(dest, "errno", e.errno)
    c.close()
"""


def test_connect_to_multicast_or_broadcast_is_not_our_own_listener(sockdir: Path) -> None:
    """A wildcard listener of ours stands for the local addresses on its port, and the
    locality probe is a bind, which takes multicast and broadcast addresses too: a
    connect to 224.0.0.1 or 255.255.255.255 reached our listener, where TCP fails with
    ENETUNREACH.  Now they go the way of any address no rule converts."""
    code = OWN_LISTENER.replace("PORT", str(free_port()))
    native = subprocess.run(["python3", "-c", code], capture_output=True, text=True,
                            timeout=30).stdout
    assert "::1 connected" in native and "ff02::1 errno" in native
    done = run_wrapped([f"in,path={sockdir}/own.sock"], ["python3", "-c", code])
    assert done.stdout == native, done.stdout + done.stderr
