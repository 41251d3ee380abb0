"""The running dispatcher's front: listeners, reload, registrations, status, signals.

The per-connection loop is a C program (src/dispatcher/, ``unixify-dispatcher``) that
this process starts and feeds over a SOCK_SEQPACKET channel: the listener fds, the route
table (dispatchconf.encode_routes, in a memfd) and each protocol B registration it has
checked.  Everything that is not per connection stays here.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import NoReturn

from unixify.dispatchconf import Config, ConfigErrors, Control, Listener, encode_routes

PROGRAM = "unixify-dispatcher"
ENV_PROGRAM = "UNIXIFY_DISPATCHER"  # another build of the loop (tests: sanitizers)
IPV6_TRANSPARENT = 75
IPV6_FREEBIND = 78
IP_TRANSPARENT = 19
IP_FREEBIND = 15
CLONE_NEWNET = 0x40000000
FDS_PER_MESSAGE = 250
REGISTER = b"\x01\x00\x00\x00"
STATUS = b"status"
REPLY_SECONDS = 30
RESTARTS = 5  # loop restarts allowed in RESTART_WINDOW seconds
RESTART_WINDOW = 60
MAX_CLIENTS = 1024  # control connections waiting for their first message
CLIENT_SECONDS = 10  # ... for at most this long


class StartError(Exception):
    """The dispatcher cannot start (or reload); the message is complete."""


_stderr_is_socket = False


def log(message: str, priority: int = 6) -> None:
    """One line on stderr, as the shim writes them (a syslog priority prefix when stderr
    is a socket, as under journald)."""
    prefix = f"<{priority}>" if _stderr_is_socket else ""
    with contextlib.suppress(OSError):
        os.write(2, f"{prefix}unixify[{os.getpid()}]: {message}\n".encode(errors="replace"))


def program_path() -> str:
    override = os.environ.get(ENV_PROGRAM)
    if override:
        return override
    from unixify.shim import ShimError, dispatcher_path

    try:
        return dispatcher_path()
    except ShimError as err:
        raise StartError(str(err)) from None


class Program:
    """The loop's program, held open from the start: after ``drop,user=`` the front may
    no longer reach its path (an install under root's 0700 home), yet must be able to
    start the loop again."""

    def __init__(self) -> None:
        path = program_path()
        try:
            self.fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError as err:
            raise StartError(f"cannot open {path}: {err.strerror}") from None
        self.path = path

    def argv0(self) -> str:
        """What to execute: the file held open (through /proc, which needs no search
        permission on its directories), or its path where /proc is missing."""
        held = f"/proc/self/fd/{self.fd}"
        return held if os.path.exists(held) else self.path


def notify(state: str) -> None:
    """sd_notify: tell the service manager, when there is one."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(state.encode(), address)


# ---- listeners ----

_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def network_namespace(path: str | None) -> Iterator[None]:
    """This thread inside the network namespace at path for the block."""
    if path is None:
        yield
        return
    flags = os.O_RDONLY | os.O_CLOEXEC
    own = os.open("/proc/thread-self/ns/net", flags)
    try:
        try:
            target = os.open(path, flags)
        except OSError as err:
            raise OSError(err.errno, f"network namespace {path}: {err.strerror}") from None
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"cannot enter network namespace {path}: "
                                    f"{os.strerror(code)}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:  # cannot happen: it is where we were
                log("cannot return to our own network namespace; exiting", 2)
                os._exit(1)
    finally:
        os.close(own)


def open_listener(listener: Listener) -> socket.socket:
    assert listener.address is not None
    v6 = listener.address.version == 6
    family = socket.AF_INET6 if v6 else socket.AF_INET
    try:
        with network_namespace(listener.netns):
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    except OSError as err:
        raise StartError(f"line {listener.line}: {err.strerror}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if listener.reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if listener.transparent:
            sock.setsockopt(socket.IPPROTO_IPV6 if v6 else socket.SOL_IP,
                            IPV6_TRANSPARENT if v6 else IP_TRANSPARENT, 1)
        if listener.freebind:
            sock.setsockopt(socket.IPPROTO_IPV6 if v6 else socket.SOL_IP,
                            IPV6_FREEBIND if v6 else IP_FREEBIND, 1)
        if v6 and listener.address.is_unspecified:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((str(listener.address), listener.port))
        sock.listen(listener.backlog)
    except OSError as err:
        sock.close()
        raise StartError(f"line {listener.line}: cannot listen on "
                         f"{listener.describe()}: {err.strerror}") from None
    return sock


def passed_sockets() -> list[tuple[str, socket.socket]]:
    """The sockets systemd passed (LISTEN_FDS for this pid), with their names; the
    variables are removed so that nothing we start takes them for its own."""
    count = os.environ.pop("LISTEN_FDS", "")
    pid = os.environ.pop("LISTEN_PID", "")
    names = os.environ.pop("LISTEN_FDNAMES", "").split(":")
    if not count or pid != str(os.getpid()) or not count.isdigit():
        return []
    out = []
    for index in range(int(count)):
        fd = 3 + index
        os.set_inheritable(fd, False)
        out.append((names[index] if index < len(names) else "unknown",
                    socket.socket(fileno=fd)))
    return out


def take_passed(listener: Listener, passed: list[tuple[str, socket.socket]],
                taken: set[int]) -> list[socket.socket]:
    found = []
    for name, sock in passed:
        if listener.systemd_name is not None and name != listener.systemd_name:
            continue
        if sock.fileno() in taken:
            continue
        kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or \
                kind != socket.SOCK_STREAM or not listening:
            raise StartError(f"line {listener.line}: passed socket {name!r} (fd "
                             f"{sock.fileno()}) is not a listening TCP socket")
        taken.add(sock.fileno())
        found.append(sock)
    if not found:
        which = f"named {listener.systemd_name!r} " if listener.systemd_name else ""
        raise StartError(f"line {listener.line}: no socket {which}was passed by systemd "
                         "(LISTEN_FDS/LISTEN_PID)")
    return found


# ---- the control socket ----

def open_control(control: Control, default_mode: int) -> socket.socket:
    path = control.path
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None:
        if not stat.S_ISSOCK(info.st_mode):
            raise StartError(f"control socket {path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale: nobody listens there
            else:
                raise StartError(f"control socket {path} is in use (another dispatcher?)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(path)
        _permissions(control, default_mode)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise StartError(f"line {control.line}: cannot make control socket {path}: "
                         f"{err.strerror}") from None
    finally:
        os.umask(old)
    sock.setblocking(False)
    return sock


def _permissions(control: Control, default_mode: int) -> None:
    """The control socket file's owner, group and mode as the line says."""
    os.chown(control.path, -1 if control.owner is None else control.owner,
             -1 if control.group is None else control.group)
    os.chmod(control.path, default_mode if control.mode is None else control.mode)


def set_permissions(control: Control, default_mode: int) -> None:
    try:
        _permissions(control, default_mode)
    except OSError as err:
        log(f"line {control.line}: cannot set the permissions of {control.path}: "
            f"{err.strerror}", 3)


def close_control(sock: socket.socket, path: str) -> None:
    """Close the control socket and remove its file while it is still ours."""
    with contextlib.suppress(OSError):
        if sock.getsockname() == path and stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    sock.close()


# ---- the loop process ----

class Loop:
    """The C loop and the channel to it."""

    def __init__(self, program: Program, verbose: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env["UNIXIFY_VERBOSE"] = str(1 + verbose)
        try:
            # the held fd goes along so that /proc/self/fd/N names it in the child
            self.proc = subprocess.Popen([program.argv0(), str(theirs.fileno())],
                                         pass_fds=[theirs.fileno(), program.fd], env=env,
                                         stdin=subprocess.DEVNULL)
        except OSError as err:
            raise StartError(f"cannot start {PROGRAM}: {err.strerror}") from None
        finally:
            theirs.close()
        self.channel = ours
        self.started = time.monotonic()

    def send(self, kind: bytes, fds: list[int]) -> None:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] \
            if fds else []
        self.channel.sendmsg([kind], ancillary)

    def receive(self, kind: bytes) -> tuple[bytes, list[int]]:
        self.channel.settimeout(REPLY_SECONDS)
        try:
            data, ancillary, _, _ = self.channel.recvmsg(512, socket.CMSG_SPACE(4))
        except OSError as err:
            raise StartError(f"{PROGRAM} does not answer: {err}") from None
        finally:
            self.channel.settimeout(None)
        fds: list[int] = []
        for level, kind_, payload in ancillary:
            if level == socket.SOL_SOCKET and kind_ == socket.SCM_RIGHTS:
                fds.extend(array.array("i", payload[:len(payload) - len(payload) % 4]))
        if not data.startswith(kind):
            for fd in fds:
                os.close(fd)
            raise StartError(f"{PROGRAM} exited or answered out of turn")
        return data[1:], fds

    def load(self, listeners: list[socket.socket], routes: bytes) -> None:
        fds = [sock.fileno() for sock in listeners]
        for start in range(0, len(fds), FDS_PER_MESSAGE):
            self.send(b"L", fds[start:start + FDS_PER_MESSAGE])
        memfd = os.memfd_create("unixify-routes", os.MFD_CLOEXEC)
        try:
            os.write(memfd, routes)
            self.send(b"T", [memfd])
        finally:
            os.close(memfd)
        answer, _ = self.receive(b"t")
        if answer != b"ok":
            raise StartError(f"{PROGRAM} refused the table: {answer.decode(errors='replace')}")

    def status(self) -> str:
        self.send(b"S", [])
        _, fds = self.receive(b"s")
        if not fds:
            return "(no status)\n"
        with os.fdopen(fds[0], "rb") as handle:
            for extra in fds[1:]:
                os.close(extra)
            handle.seek(0)
            return handle.read().decode(errors="replace")

    def quit(self, timeout: float) -> int:
        with contextlib.suppress(OSError):
            self.send(b"Q", [])
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.channel.close()
        return code


# ---- the daemon ----

class Daemon:
    def __init__(self, path: str, verbose: int, load: Callable[[str], Config]) -> None:
        self.path = path
        self.verbose = verbose
        self.load_config = load
        self.config: Config | None = None
        self.listeners: dict[tuple[object, ...], list[socket.socket]] = {}
        self.passed = passed_sockets()
        self.control: socket.socket | None = None
        self.control_path = ""
        self.clients: dict[int, tuple[socket.socket, float]] = {}  # fd: sock, deadline
        self.regs: dict[int, tuple[int, int, socket.socket]] = {}  # fd: slot, uid, sock
        self.loop: Loop | None = None
        self.program: Program | None = None
        self.restarts: list[float] = []
        self.poll = select.poll()
        self.wakeup_r, self.wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.signals: list[int] = []

    # -- configuration --

    def open_listeners(self, config: Config) -> dict[tuple[object, ...], list[socket.socket]]:
        """Sockets for config's listeners: those we have already, new ones opened."""
        taken = {sock.fileno() for key, socks in self.listeners.items()
                 if key[3] for sock in socks}
        opened: dict[tuple[object, ...], list[socket.socket]] = {}
        try:
            for listener in config.listeners:
                key = listener.key()
                if key in self.listeners:
                    opened[key] = self.listeners[key]
                elif listener.systemd:
                    opened[key] = take_passed(listener, self.passed, taken)
                else:
                    opened[key] = [open_listener(listener)]
        except BaseException:
            for key, socks in opened.items():
                if key not in self.listeners and not key[3]:
                    for sock in socks:
                        sock.close()
            raise
        return opened

    def apply(self, config: Config) -> None:
        """Make config the running one, or raise StartError with the old one intact."""
        opened = self.open_listeners(config)
        control = self.control
        new_control = None
        if config.control and (self.control is None or config.control.path !=
                               self.control_path):
            try:
                new_control = open_control(config.control, 0o666)
            except StartError:
                self.close_new(opened)
                raise
        try:
            assert self.loop is not None
            self.loop.load([s for socks in opened.values() for s in socks],
                           encode_routes(config.routes))
        except (StartError, OSError) as err:
            self.close_new(opened)
            if new_control is not None:
                close_control(new_control, config.control.path)  # type: ignore[union-attr]
            raise StartError(str(err)) from None
        for key, socks in self.listeners.items():
            if key not in opened and not key[3]:
                for sock in socks:
                    sock.close()
        self.listeners = opened
        running = self.config.control if self.config else None
        if new_control is None and config.control and running and \
                config.control._replace(line=0) != running._replace(line=0):
            set_permissions(config.control, 0o666)  # same socket, other permissions
        if new_control is not None or (control is not None and config.control is None):
            if control is not None:
                self.poll.unregister(control.fileno())
                close_control(control, self.control_path)
            self.control = new_control
            self.control_path = config.control.path if config.control else ""
            if new_control is not None:
                self.poll.register(new_control.fileno(), select.POLLIN)
        self.config = config

    def close_new(self, opened: dict[tuple[object, ...], list[socket.socket]]) -> None:
        for key, socks in opened.items():
            if key not in self.listeners and not key[3]:
                for sock in socks:
                    sock.close()

    def drop_privileges(self) -> None:
        assert self.config is not None
        drop = self.config.drop
        if drop is None:
            return
        assert drop.gid is not None
        try:
            os.setgroups([])
            os.setgid(drop.gid)
            os.setuid(drop.uid)
        except OSError as err:
            raise StartError(f"line {drop.line}: cannot drop to uid {drop.uid} gid "
                             f"{drop.gid}: {err.strerror}") from None

    def start(self) -> None:
        self.program = Program()  # before drop,user= may take the way to it
        config = self.load_config(self.path)
        opened = self.open_listeners(config)
        self.listeners = opened
        if config.control:
            self.control = open_control(config.control, 0o666)
            self.control_path = config.control.path
            self.poll.register(self.control.fileno(), select.POLLIN)
        self.config = config
        self.drop_privileges()
        self.start_loop()
        log(f"ready: {sum(len(s) for s in opened.values())} listeners, "
            f"{len(config.routes)} routes from {self.path}")
        notify("READY=1\nSTATUS=dispatching")

    def start_loop(self) -> None:
        assert self.config is not None and self.program is not None
        self.loop = Loop(self.program, self.verbose)
        self.poll.register(self.loop.channel.fileno(), select.POLLIN)
        self.loop.load([s for socks in self.listeners.values() for s in socks],
                       encode_routes(self.config.routes))

    def reload(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
        try:
            config = self.load_config(self.path)
            if self.config and config.drop != self.config.drop:
                log("reload: a changed 'drop' line takes effect at the next start", 4)
            self.apply(config)
        except ConfigErrors as err:
            for error in err.errors:
                log(f"reload: {error}", 3)
            log("reload failed; the running configuration stays", 3)
        except StartError as err:
            log(f"reload: {err}", 3)
            log("reload failed; the running configuration stays", 3)
        else:
            self.revoke()
            log(f"reloaded: {sum(len(s) for s in self.listeners.values())} listeners, "
                f"{len(config.routes)} routes")
        notify("READY=1")

    # -- protocol B --

    def registrations(self, slot: int, uid: int | None = None) -> int:
        return sum(1 for s, u, _ in self.regs.values() if s == slot and
                   (uid is None or u == uid))

    def client_message(self, sock: socket.socket) -> None:
        self.poll.unregister(sock.fileno())
        del self.clients[sock.fileno()]
        try:
            data = sock.recv(64)
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
        except OSError:
            sock.close()
            return
        pid, uid, gid = struct.unpack("3i", creds)
        if data == STATUS:
            self.send_status(sock)
            return
        if len(data) != 8 or data[:4] != REGISTER:
            log(f"control: pid {pid} uid {uid} sent an unknown request; closed", 4)
            sock.close()
            return
        slot = int.from_bytes(data[4:], "big")
        why = self.refusal(slot, uid, gid)
        if why:
            log(f"control: refused pid {pid} uid {uid} registering slot {slot}: {why}", 4)
            sock.close()
            return
        try:  # the loop answers "80 00 00 00": it must come before any connection
            assert self.loop is not None
            self.loop.send(b"R" + slot.to_bytes(4, "big"), [sock.fileno()])
        except OSError as err:
            log(f"control: registration of slot {slot} by pid {pid} failed: {err}", 4)
            sock.close()
            return
        self.regs[sock.fileno()] = (slot, uid, sock)
        self.poll.register(sock.fileno(), select.POLLRDHUP)

    def refusal(self, slot: int, uid: int, gid: int) -> str:
        assert self.config is not None
        allows = [a for a in self.config.allows if a.slot == slot and a.uid == uid and
                  (a.gid is None or a.gid == gid)]
        if not allows:
            return "no allow line lets this uid (and gid) register it"
        owners = {u for s, u, _ in self.regs.values() if s == slot}
        if owners and uid not in owners:
            return f"taken by uid {owners.pop()}"
        if self.registrations(slot, uid) >= allows[0].max:
            return f"this uid has {allows[0].max} registrations already (max={allows[0].max})"
        return ""

    def expire_clients(self) -> None:
        """Connections to the control socket that sent nothing in time are closed."""
        now = time.monotonic()
        for fd, (sock, deadline) in list(self.clients.items()):
            if now > deadline:
                self.poll.unregister(fd)
                del self.clients[fd]
                sock.close()

    def revoke(self) -> None:
        """Registrations the allow lines no longer allow end (shutdown reaches the
        loop's copy of the socket too, and the receiver)."""
        for fd, (slot, uid, sock) in list(self.regs.items()):
            assert self.config is not None
            if not any(a.slot == slot and a.uid == uid for a in self.config.allows):
                log(f"control: slot {slot} is no longer allowed to uid {uid}; "
                    "registration ended", 4)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                self.reg_gone(fd)

    def reg_gone(self, fd: int) -> None:
        self.poll.unregister(fd)
        _, _, sock = self.regs.pop(fd)
        sock.close()

    def send_status(self, sock: socket.socket) -> None:
        try:
            assert self.loop is not None
            text = self.loop.status()
        except (StartError, OSError) as err:
            text = f"(the loop does not answer: {err})\n"
        text = f"pid {os.getpid()}\nconfiguration {self.path}\n" + text
        with contextlib.suppress(OSError):
            sock.setblocking(True)
            sock.settimeout(5)
            data = text.encode()
            for start in range(0, len(data), 16384):
                sock.send(data[start:start + 16384])
        sock.close()

    # -- the loop --

    def on_signal(self, number: int, _frame: object) -> None:
        self.signals.append(number)
        with contextlib.suppress(OSError):
            os.write(self.wakeup_w, b"!")

    def loop_died(self) -> None:
        assert self.loop is not None
        self.poll.unregister(self.loop.channel.fileno())
        code = self.loop.quit(1)
        for fd in list(self.regs):
            self.reg_gone(fd)
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
        if len(self.restarts) > RESTARTS:
            raise StartError(f"{PROGRAM} exited (status {code}) {RESTARTS} times in "
                             f"{RESTART_WINDOW} s; giving up")
        log(f"{PROGRAM} exited with status {code}; starting it again", 3)
        self.start_loop()

    def stop(self) -> int:
        notify("STOPPING=1")
        log("stopping: no more connections accepted; passing on those waiting")
        for socks in self.listeners.values():
            for sock in socks:
                sock.close()
        self.listeners = {}
        if self.control is not None:
            close_control(self.control, self.control_path)
            self.control = None
        code = self.loop.quit(60) if self.loop else 0
        for _, _, sock in self.regs.values():
            sock.close()
        log("stopped")
        return 0 if code == 0 else 1

    def run(self) -> int:
        for handled in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(handled, self.on_signal)
        self.poll.register(self.wakeup_r, select.POLLIN)
        self.start()
        while True:
            for fd, events in self.poll.poll(1000):
                self.event(fd, events)
            while self.signals:
                number = self.signals.pop(0)
                if number == signal.SIGHUP:
                    self.reload()
                else:
                    return self.stop()
            if self.loop and self.loop.proc.poll() is not None:
                self.loop_died()
            self.expire_clients()

    def event(self, fd: int, events: int) -> None:
        if fd == self.wakeup_r:
            with contextlib.suppress(OSError):
                os.read(fd, 512)
        elif self.control is not None and fd == self.control.fileno():
            with contextlib.suppress(BlockingIOError, InterruptedError):
                sock, _ = self.control.accept()
                if len(self.clients) >= MAX_CLIENTS:
                    log(f"control: {MAX_CLIENTS} connections wait for their first message; "
                        "refusing more", 4)
                    sock.close()
                    return
                self.clients[sock.fileno()] = (sock, time.monotonic() + CLIENT_SECONDS)
                self.poll.register(sock.fileno(), select.POLLIN)
        elif fd in self.clients:
            self.client_message(self.clients[fd][0])
        elif fd in self.regs:
            self.reg_gone(fd)
        elif self.loop is not None and fd == self.loop.channel.fileno():
            self.loop_died()


def serve(path: str, verbose: int, load: Callable[[str], Config]) -> NoReturn:
    global _stderr_is_socket
    with contextlib.suppress(OSError):
        _stderr_is_socket = stat.S_ISSOCK(os.fstat(2).st_mode)
    daemon = Daemon(path, verbose, load)
    try:
        code = daemon.run()
    except ConfigErrors as err:
        for error in err.errors:
            log(str(error), 3)
        code = 1
    except StartError as err:
        log(str(err), 3)
        if daemon.loop is not None:
            daemon.loop.quit(10)
        code = 1
    sys.exit(code)
