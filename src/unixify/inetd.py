"""``unixify inetd``: one program per connection a dispatcher passes, socket on stdin and
stdout, with the UCSPI variables (as tcpserver sets them).

Connections arrive at a protocol A receiver (a Unix datagram socket at PATH) or, with
``--slot``, through a slot registered at a dispatcher's control socket (protocol B; the
registration is made again when the dispatcher restarts).  At ``--max-children``
nothing more is received, so connections wait queued and the dispatcher's backpressure
applies.  SIGTERM or SIGINT: stop receiving and exit 0 (running children go on).
"""

from __future__ import annotations

import contextlib
import errno
import getopt
import ipaddress
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass

USAGE = ("usage: unixify inetd [--max-children N] --receive PATH [--slot N] -- "
         "PROGRAM [ARGS...]\n")
REGISTER = b"\1\0\0\0"
REGISTERED = b"\x80\0\0\0"
CONNECTION = b"\3\0\0\0"
MAX_FDS = 8


class InetdUsage(Exception):
    """Bad arguments; the message is a complete line."""


@dataclass
class Options:
    path: str
    slot: int | None
    max_children: int
    program: list[str]


def parse(argv: list[str]) -> Options:
    try:
        options, rest = getopt.getopt(argv, "", ["max-children=", "receive=", "slot="])
    except getopt.GetoptError as err:
        raise InetdUsage(f"inetd: {err.msg}") from None
    values = dict(options)
    if "--receive" not in values:
        raise InetdUsage("inetd: --receive PATH is required")
    path = values["--receive"]
    if not path or len(os.fsencode(path)) > 107:
        raise InetdUsage(f"inetd: --receive {path!r} is not a Unix socket path")
    numbers: dict[str, int] = {}
    for key, low in (("--max-children", 1), ("--slot", 0)):
        if key in values:
            text = values[key]
            if not text.isascii() or not text.isdigit() or not low <= int(text) < 2**32:
                raise InetdUsage(f"inetd: {key} {text!r} is not a number "
                                 f"from {low} to 4294967295")
            numbers[key] = int(text)
    if not rest:
        raise InetdUsage("inetd: no program to run")
    return Options(path, numbers.get("--slot"), numbers.get("--max-children", 64), rest)


def log(message: str) -> None:
    sys.stderr.write(f"unixify inetd[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def bind_receiver(path: str) -> socket.socket:
    """A datagram socket at path; a stale socket file there is replaced, a live one (or
    anything else) never."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        return sock
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            sock.close()
            raise
    info = os.lstat(path)
    if not stat.S_ISSOCK(info.st_mode):
        sock.close()
        raise OSError(errno.EADDRINUSE, f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            pass  # stale: nobody is bound there
        else:
            sock.close()
            raise OSError(errno.EADDRINUSE, f"{path} is in use")
    os.unlink(path)
    sock.bind(path)
    return sock


def register(path: str, slot: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.settimeout(5)
        sock.connect(path)
        sock.send(REGISTER + slot.to_bytes(4, "big"))
        if sock.recv(16) != REGISTERED:
            raise OSError(errno.EACCES, f"the dispatcher refused slot {slot}")
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def ucspi(conn: socket.socket) -> dict[str, str]:
    """TCPREMOTEIP/PORT and TCPLOCALIP/PORT; IPv4-mapped written as plain IPv4."""
    env = {"PROTO": "TCP"}
    for prefix, address in (("TCPREMOTE", conn.getpeername()), ("TCPLOCAL", conn.getsockname())):
        ip = ipaddress.ip_address(address[0].split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        env[prefix + "IP"] = str(ip)
        env[prefix + "PORT"] = str(address[1])
    return env


def receive(sock: socket.socket, slot: bool) -> socket.socket | None:
    """The next passed TCP socket; None when the message was not one (closed) or, for a
    slot, when the dispatcher went away (EOF)."""
    try:
        data, fds, flags, _ = socket.recv_fds(sock, 16, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
    except ConnectionResetError:
        data, fds, flags = b"", [], 0
    if slot and not data and not fds:
        raise EOFError
    if len(fds) == 1 and not flags & socket.MSG_CTRUNC and (not slot or data == CONNECTION):
        conn = tcp_connection(fds[0])
        if conn is not None:
            return conn
    else:
        for fd in fds:
            discard(fd)
    log("a message that was not one TCP connection; closed")
    return None


LINGER_OFF = bytes(8)  # struct linger {0, 0}


def discard(fd: int) -> None:
    """Close what a sender passed without waiting: lingering off first, so a TCP socket
    set to linger with data it cannot send does not hold the loop in close()."""
    try:
        view = socket.socket(fileno=fd)
    except OSError:  # not a socket
        os.close(fd)
        return
    with contextlib.suppress(OSError):
        view.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_OFF)
    view.close()


def tcp_connection(fd: int) -> socket.socket | None:
    """fd as a connected TCP socket, or None with fd closed (whoever may write to the
    receiver may pass anything: a pipe, a listener, a Unix socket)."""
    try:
        conn = socket.socket(fileno=fd)
    except OSError:  # not a socket at all
        os.close(fd)
        return None
    try:
        if (conn.family in (socket.AF_INET, socket.AF_INET6)
                and conn.type == socket.SOCK_STREAM
                and not conn.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
            conn.getpeername()
            return conn
    except OSError:
        pass
    discard(conn.detach())
    return None


class Server:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.sock: socket.socket | None = None
        self.file: tuple[int, int] | None = None  # the receiver file we made

    def connect(self) -> socket.socket:
        if self.options.slot is None:
            return bind_receiver(self.options.path)
        return register(self.options.path, self.options.slot)

    def reap(self) -> None:
        for pid, child in list(self.children.items()):
            if child.poll() is not None:
                del self.children[pid]

    def spawn(self, conn: socket.socket) -> None:
        env = dict(os.environ)
        try:
            env.update(ucspi(conn))
            child = subprocess.Popen(self.options.program, stdin=conn.fileno(),
                                     stdout=conn.fileno(), env=env)
            self.children[child.pid] = child
        except OSError as err:
            log(f"cannot run {self.options.program[0]}: {err.strerror}")
        except ValueError as err:
            log(f"connection closed: {err}")
        finally:
            conn.close()

    def rejoin(self) -> None:
        """The dispatcher went away: register again, once a second, until stopped."""
        assert self.sock is not None
        self.sock.close()
        log(f"dispatcher at {self.options.path} gone; registering slot "
            f"{self.options.slot} again")
        while not self.stopping:
            try:
                self.sock = self.connect()
                log(f"registered slot {self.options.slot} again")
                return
            except OSError:
                self.wait(1.0)
        self.sock = None

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))
            self.reap()

    def serve(self) -> int:
        self.sock = self.connect()
        if self.options.slot is None:
            info = os.lstat(self.options.path)
            self.file = (info.st_dev, info.st_ino)
        log(f"receiving connections at {self.options.path}"
            + (f" for slot {self.options.slot}" if self.options.slot is not None else ""))
        while not self.stopping:
            self.reap()
            if len(self.children) >= self.options.max_children:
                self.wait(0.05)  # at the cap: leave connections queued
                continue
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if not ready or self.stopping:
                continue
            try:
                conn = receive(self.sock, self.options.slot is not None)
            except EOFError:
                self.rejoin()
                if self.sock is None:
                    break
                continue
            except BlockingIOError:
                continue
            if conn is not None:
                self.spawn(conn)
        return 0

    def stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def cleanup(self) -> None:
        if self.sock is None:
            return
        if self.file is not None:
            try:
                info = os.lstat(self.options.path)
                if (info.st_dev, info.st_ino) == self.file:
                    os.unlink(self.options.path)
            except OSError:
                pass
        self.sock.close()


def main(argv: list[str]) -> int:
    try:
        options = parse(argv)
    except InetdUsage as err:
        sys.stderr.write(f"unixify: {err}\n")
        return 2
    server = Server(options)
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGINT, server.stop)
    try:
        return server.serve()
    except OSError as err:
        sys.stderr.write(f"unixify: inetd: {options.path}: {err.strerror or err}\n")
        return 1
    finally:
        server.cleanup()
