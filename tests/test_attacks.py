"""Attacks on "where a rule says Unix, no IP port ever opens": addresses in the shapes the
kernel accepts besides the usual ones, sockets the shim never saw made, and calls that
connect or bind implicitly by another way than bind/connect/listen."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    HELPERS,
    compile_c,
    free_port,
    parse_kv,
    preloaded_env,
    run_wrapped,
)
from test_failclosed import ip_peers

from unixify.encoding import encode_rules
from unixify.rules import parse_rule

# The program makes its calls through libc (ctypes), so the preloaded shim sees them
# exactly as a C program's, with the address bytes it chooses.  It prints each call's
# result (0 or the errno name) and "ip=" the IP ports its socket holds (/proc/net).
ATTACK = r"""
import ctypes, errno, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
mode, port = sys.argv[1], int(sys.argv[2])
FASTOPEN = 0x20000000

def v4(family=socket.AF_INET, addr=b"\x7f\0\0\1"):
    return struct.pack("=H", family) + struct.pack("!H", port) + addr + bytes(8)

def v6(length=28, addr=bytes(15) + b"\1"):
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!H", port) + bytes(4) + addr
            + bytes(4))[:length]

def result(r):
    return "0" if r >= 0 else errno.errorcode[ctypes.get_errno()]

def ip_ports(fd):
    ino = os.readlink("/proc/self/fd/%d" % fd)[8:-1]
    return ",".join(t + ":" + line.split()[1] for t in ("tcp", "tcp6", "udp", "udp6")
                    for line in open("/proc/self/net/" + t).readlines()[1:]
                    if line.split()[9] == ino)

def sendto(fd, addr, flags=0):
    return result(libc.sendto(fd, b"hi", 2, flags, addr, len(addr)))

class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_char_p), ("len", ctypes.c_size_t)]

class mmsghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("namelen", ctypes.c_uint),
                ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int), ("len", ctypes.c_uint)]

def sendmmsg(fd, addr, flags):
    iov = iovec(b"hi", 2)
    m = mmsghdr(addr, len(addr), ctypes.pointer(iov), 1, None, 0, 0, 0)
    return result(libc.sendmmsg(fd, ctypes.byref(m), 1, flags))

def raw_socket(family, type):  # as a Go runtime or a sandboxed library makes one
    return libc.syscall(41, family, type, 0)  # SYS_socket on x86_64

if mode == "bind-unspec":      # AF_UNSPEC with INADDR_ANY binds an IPv4 socket
    fd = socket.socket().detach()
    print("bind=" + result(libc.bind(fd, v4(socket.AF_UNSPEC, bytes(4)), 16)))
    print("listen=" + result(libc.listen(fd, 5)))
elif mode == "bind-v6-24":     # RFC 2133's sockaddr_in6, without sin6_scope_id
    fd = socket.socket(socket.AF_INET6).detach()
    print("bind=" + result(libc.bind(fd, v6(24, bytes(16)), 24)))
    print("listen=" + result(libc.listen(fd, 5)))
elif mode == "bindresvport":    # glibc binds with its own bind, out of the shim's sight
    fd = socket.socket().detach()
    print("bind=" + result(libc.bindresvport(fd, None)))
    print("listen=" + result(libc.listen(fd, 5)))
elif mode == "bindresvport6":   # libtirpc's takes the socket's family; ours too
    fd = socket.socket(socket.AF_INET6).detach()
    print("bind=" + result(libc.bindresvport(fd, None)))
    print("listen=" + result(libc.listen(fd, 5)))
elif mode == "rresvport":
    lport = ctypes.c_int(1023)
    fd = libc.rresvport(ctypes.byref(lport))
    print("bind=" + result(fd))
    print("listen=" + result(libc.listen(fd, 5)))
elif mode == "connect-v6-24":
    fd = socket.socket(socket.AF_INET6).detach()
    print("connect=" + result(libc.connect(fd, v6(24), 24)))
elif mode == "underscore-connect":  # glibc exports connect under this name too
    fd = socket.socket().detach()
    print("connect=" + result(getattr(libc, "__connect")(fd, v4(), 16)))
elif mode == "udp6-sendto-v4":  # an IPv6 datagram socket sends to AF_INET addresses
    fd = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).detach()
    print("sendto=" + sendto(fd, v4()))
elif mode == "udp6-connect-v4":
    fd = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).detach()
    print("connect=" + result(libc.connect(fd, v4(), 16)))
elif mode == "udp4-sendto-unspec":  # udp_sendmsg takes AF_UNSPEC for AF_INET
    fd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach()
    print("sendto=" + sendto(fd, v4(socket.AF_UNSPEC)))
elif mode == "sendmmsg-fastopen":
    fd = socket.socket().detach()
    print("sendmmsg=" + sendmmsg(fd, v4(), FASTOPEN))
elif mode == "raw-udp-sendto":
    fd = raw_socket(socket.AF_INET, socket.SOCK_DGRAM)
    print("sendto=" + sendto(fd, v4()))
elif mode == "raw-tcp-fastopen":
    fd = raw_socket(socket.AF_INET, socket.SOCK_STREAM)
    print("sendto=" + sendto(fd, v4(), FASTOPEN))
elif mode == "raw-udp-sendmmsg":
    fd = raw_socket(socket.AF_INET, socket.SOCK_DGRAM)
    print("sendmmsg=" + sendmmsg(fd, v4(), 0))
print("ip=" + ip_ports(fd))
ino = os.readlink("/proc/self/fd/%d" % fd)[8:-1]
print("unix=" + "".join(line.split()[7] for line in open("/proc/self/net/unix")
                        if line.split()[6] == ino and len(line.split()) > 7))
"""

IN_MODES = ["bind-unspec", "bind-v6-24", "bindresvport", "bindresvport6", "rresvport"]
OUT_MODES = ["connect-v6-24", "underscore-connect", "udp6-sendto-v4", "udp6-connect-v4",
             "udp4-sendto-unspec", "sendmmsg-fastopen", "raw-udp-sendto", "raw-tcp-fastopen",
             "raw-udp-sendmmsg"]


def attack(rules: list[str], mode: str, port: int) -> dict[str, str]:
    result = run_wrapped(rules, [sys.executable, "-c", ATTACK, mode, str(port)])
    assert result.returncode == 0, result
    return parse_kv(result.stdout)


@pytest.mark.parametrize("mode", IN_MODES)
def test_bind_in_any_address_shape_follows_the_rule(sockdir: Path, mode: str) -> None:
    # Each gives the program a TCP listener without the shim; the rule says Unix.
    info = attack([f"in,path={sockdir}/s.sock"], mode, free_port())
    assert info == {"bind": "0", "listen": "0", "ip": "", "unix": f"{sockdir}/s.sock"}, info


@pytest.mark.parametrize("mode", IN_MODES[:4])  # rresvport returns no socket then
def test_bind_in_any_address_shape_fails_closed_on_broken_rules(sockdir: Path,
                                                                mode: str) -> None:
    info = attack([f"in,path={sockdir}/missing/s.sock"], mode, free_port())
    assert info == {"bind": "ENOENT", "listen": "ENOENT", "ip": "", "unix": ""}, info


@pytest.mark.parametrize("mode", OUT_MODES)
def test_send_and_connect_in_any_address_shape_follow_the_rule(sockdir: Path,
                                                               mode: str) -> None:
    # A real peer waits on 127.0.0.1:port (and ::1 for the IPv6 ones), so a call that
    # wrongly goes out over IP succeeds there and leaves the socket with an IP port.
    port = free_port()
    with ip_peers(port), socket.socket(socket.AF_INET6) as tcp6:
        tcp6.bind(("::1", port))
        tcp6.listen(8)
        info = attack([f"out,port={port},path={sockdir}/missing.sock"], mode, port)
    assert info["ip"] == "", info
    call = next(k for k in info if k not in ("ip", "unix"))
    assert info[call] in ("ECONNREFUSED", "0"), info  # "0": a datagram nobody heard


# The program ignores bind's error and runs another one on the same socket (a server
# that re-executes itself), which listens or sends: the claim must cross the exec.
EXEC_AFTER_FAILED_BIND = r"""
import errno, os, socket, sys
if len(sys.argv) == 3:
    kind = socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", int(sys.argv[2])))
    except OSError as e:
        print("bind=" + errno.errorcode[e.errno], flush=True)
    os.set_inheritable(s.fileno(), True)
    argv = [sys.executable, "-c", CODE, sys.argv[1], sys.argv[2], str(s.fileno())]
    if os.environ.get("HOW") == "execveat":  # glibc 2.34's, besides the exec family
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        c_argv = (ctypes.c_char_p * (len(argv) + 1))(*[a.encode() for a in argv], None)
        c_env = (ctypes.c_char_p * (len(os.environ) + 1))(
            *[("%s=%s" % kv).encode() for kv in os.environ.items()], None)
        libc.execveat(-100, sys.executable.encode(), c_argv, c_env, 0)  # AT_FDCWD
        sys.exit("execveat failed")
    os.execv(sys.executable, argv)
s = socket.socket(fileno=int(sys.argv[3]))
try:
    if sys.argv[1] == "tcp":
        s.listen(4)
    else:
        s.sendto(b"hi", ("127.0.0.1", int(sys.argv[2])))
    print("after_exec=0")
except OSError as e:
    print("after_exec=" + errno.errorcode[e.errno])
ino = os.readlink("/proc/self/fd/%d" % s.fileno())[8:-1]
print("ip=" + ",".join(line.split()[1] for t in ("tcp", "udp")
                       for line in open("/proc/self/net/" + t).readlines()[1:]
                       if line.split()[9] == ino))
"""


@pytest.mark.parametrize("how", ["execv", "execveat"])
@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_failed_claim_survives_exec(sockdir: Path, kind: str, how: str) -> None:
    port = free_port()
    code = f"CODE = {EXEC_AFTER_FAILED_BIND!r}\n" + EXEC_AFTER_FAILED_BIND
    result = run_wrapped([f"in,port={port},path={sockdir}/missing/s.sock"],
                         [sys.executable, "-c", code, kind, str(port)],
                         env={**os.environ, "HOW": how})
    info = parse_kv(result.stdout)
    assert info == {"bind": "ENOENT", "after_exec": "ENOENT", "ip": ""}, (info, result.stderr)


def test_socket_calls_before_our_constructor_follow_the_rules(helper_dir: Path,
                                                              sockdir: Path) -> None:
    # The dynamic linker may run a library's constructor before the shim's.
    lib = compile_c(HELPERS / "early.c", helper_dir / "libearly.so",
                    extra=["-DLIB", "-shared", "-fPIC"])
    program = compile_c(HELPERS / "early.c", helper_dir / "early",
                        extra=["-Wl,--no-as-needed", f"-L{helper_dir}", "-learly",
                               f"-Wl,-rpath,{helper_dir}"])
    port = free_port()
    result = run_wrapped([f"in,path={sockdir}/s.sock"], [str(program)],
                         env={**os.environ, "EARLY_PORT": str(port)})
    assert parse_kv(result.stdout) == {"result": "0", "family": str(socket.AF_UNIX)}, result
    assert lib.exists()


def test_forged_claim_item_for_another_fd_is_ignored(sockdir: Path) -> None:
    # fd 0 is a pipe here, not the IP socket the item names: one warning, nothing else.
    code = "import socket; s = socket.socket(); s.listen(1); print('listened')"
    env = preloaded_env(UNIXIFY_RULES=encode_rules([parse_rule(f"in,path={sockdir}/s.sock")]),
                        UNIXIFY_INHERIT="c,0,12345,2,1;")
    result = subprocess.run([sys.executable, "-c", code], input="", capture_output=True,
                            text=True, env=env, timeout=10)
    assert result.stdout == "listened\n", result
    assert "ignored 1 items" in result.stderr, result
