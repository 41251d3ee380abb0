"""Datagrams that pass for a server's replies: a converted unconnected UDP client names
a sender by the Unix path it sent to, but a path is not an identity across mount
namespaces.  Another user binds the server's path in a mount namespace of its own
(`unshare -Urm`, a tmpfs over the directory) and sends to the client's autobound
address; over UDP that sender could never show the server's address and port."""

from __future__ import annotations

import ast
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HELPERS, Processes, compile_c, require_tool

NOBODY = 65534
OTHER = 65533
# run as another user: only a python3 outside /root (0700 in CI) will do
PYTHON = "/usr/bin/python3"
RULE = "out,udp,addr=127.0.0.53,port=53,path={}/srv.sock"

# A native Unix datagram server: says the client's address, replies "real" on a line.
SERVER = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("ready", flush=True)
data, addr = s.recvfrom(100)
print(addr.hex(), flush=True)
sys.stdin.readline()
s.sendto(b"real", addr)
print("replied", flush=True)
"""

# The attacker, inside its own user and mount namespace: the server's path is its own.
FORGER = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
try:
    s.sendto(b"forged", bytes.fromhex(sys.argv[2]))
    print("sent")
except OSError as e:
    print("errno", e.errno)
"""

# The wrapped client: how it talks (sendto/connect), whether it asks for SO_PASSCRED
# after its first datagram (never/after/off: turned on, then off again) and how it
# reads (recvfrom, or recvmsg with a control buffer of that many bytes).  It reads
# until the real reply or a timeout.
CLIENT = """
import socket, struct, sys
how, cred, read = sys.argv[1:4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if how == "connect":
    s.connect(("127.0.0.53", 53))
    s.send(b"first")
else:
    s.sendto(b"first", ("127.0.0.53", 53))
if cred in ("after", "off"):  # a UDP socket (Linux 6.x) refuses it before conversion
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
if cred == "off":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
print("sent", s.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED), flush=True)
sys.stdin.readline()
s.settimeout(3)
seen = []
for _ in range(3):
    try:
        if read == "recvfrom":
            data, addr = s.recvfrom(100)
            anc = []
        else:
            data, anc, _, addr = s.recvmsg(100, int(read))
    except TimeoutError:
        break
    creds = [struct.unpack("3i", d[:12]) for lv, t, d in anc
             if lv == socket.SOL_SOCKET and t == socket.SCM_CREDENTIALS]
    seen.append((data, addr, [(lv, t) for lv, t, _ in anc], creds))
    if data == b"real":
        break
print(repr(seen), flush=True)
"""

Seen = list[tuple[bytes, tuple[str, int], list[tuple[int, int]], list[tuple[int, int, int]]]]


def as_user(uid: int) -> Callable[[], None] | None:
    def switch() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    return switch if uid else None


def python_client(how: str, cred: str, read: str) -> list[str]:
    return ["python3", "-c", CLIENT, how, cred, read]


def exchange(procs: Processes, sockdir: Path, server_uid: int, program: list[str],
             forger_uid: int | None = None) -> tuple[Seen, str, int, str]:
    """The client's first datagram reaches the server; the forger (if any) sends to the
    client from the server's path in its own mount namespace, then the server replies.
    What the client saw, what the forger said, the server's pid, the client's stderr."""
    sockdir.chmod(0o755)
    os.chown(sockdir, server_uid, server_uid)
    server = procs.start([PYTHON, "-c", SERVER, f"{sockdir}/srv.sock"],
                         stdin=subprocess.PIPE, preexec_fn=as_user(server_uid))
    assert server.stdout is not None and server.stdin is not None
    assert server.stdout.readline() == "ready\n"
    client = procs.wrapped([RULE.format(sockdir)], program, stdin=subprocess.PIPE)
    assert client.stdout is not None and client.stdin is not None
    # the program's SO_PASSCRED as it reads it back
    assert client.stdout.readline() == f"sent {int('after' in program)}\n"
    address = server.stdout.readline().strip()
    forged = ""
    if forger_uid is not None:
        unshare = require_tool("unshare")
        forger = subprocess.run(
            [unshare, "-Urm", "sh", "-c",
             'mount -t tmpfs ufy "$0" && exec "$1" -c "$2" "$0/srv.sock" "$3"',
             str(sockdir), PYTHON, FORGER, address],
            capture_output=True, text=True, timeout=30, preexec_fn=as_user(forger_uid))
        forged = forger.stdout.strip() or forger.stderr
    server.stdin.write("\n")
    server.stdin.flush()
    assert server.stdout.readline() == "replied\n"
    client.stdin.write("\n")
    client.stdin.flush()
    seen: Seen = ast.literal_eval(client.stdout.readline())
    assert client.stderr is not None and client.wait(timeout=10) == 0
    return seen, forged, server.pid, client.stderr.read()


@pytest.mark.parametrize("server_uid,forger_uid", [(0, NOBODY), (NOBODY, OTHER)])
@pytest.mark.parametrize("read", ["recvfrom", "64", "1024"])
def test_forged_reply_from_another_mount_namespace(procs: Processes, sockdir: Path,
                                                   server_uid: int, forger_uid: int,
                                                   read: str) -> None:
    """Another user's datagram from the server's path in its own mount namespace is
    reported as from an unknown sender, not as 127.0.0.53 port 53; the real reply, from a
    server of root or of another user, still is.  (The old code: the forged datagram
    came from ('127.0.0.53', 53).)"""
    seen, forged, _, err = exchange(procs, sockdir, server_uid,
                               python_client("sendto", "never", read), forger_uid)
    assert forged == "sent", forged
    check_forgery_unknown(seen)
    assert err.count("is reported as from an unknown sender") == 1, err


def check_forgery_unknown(seen: Seen) -> None:
    assert [d for d, *_ in seen] == [b"forged", b"real"], seen
    (_, fake, anc, _), (_, real, anc2, _) = seen
    assert real == ("127.0.0.53", 53)
    assert fake != ("127.0.0.53", 53) and fake[0] == "127.0.0.1", seen
    assert anc == anc2 == [], "credentials the program did not ask for"


def test_forged_reply_to_recvmmsg(procs: Processes, sockdir: Path, tmp_path: Path) -> None:
    """The same through recvmmsg, each message with a control buffer of its own.  (The
    old code: the forged datagram came from ('127.0.0.53', 53).)"""
    client = str(compile_c(HELPERS / "mmsgclient.c", tmp_path / "mmsgclient"))
    seen, forged, _, _ = exchange(procs, sockdir, 0, [client, "127.0.0.53", "53"], NOBODY)
    assert forged == "sent", forged
    check_forgery_unknown(seen)


def test_connected_client_hears_only_the_server(procs: Processes, sockdir: Path) -> None:
    """connect() found the server's socket by its path in the client's mount namespace;
    the kernel refuses the forger's datagram (EPERM), whatever path it is bound to."""
    seen, forged, _, _ = exchange(procs, sockdir, 0, python_client("connect", "never", "recvfrom"),
                              NOBODY)
    assert forged == "errno 1", forged
    assert seen == [(b"real", ("127.0.0.53", 53), [], [])], seen


@pytest.mark.parametrize("read", ["64", "1024"])
def test_program_asking_for_credentials_gets_them(procs: Processes, sockdir: Path,
                                                  read: str) -> None:
    """A program that sets SO_PASSCRED on its converted socket reads it back as 1 and
    gets the sender's SCM_CREDENTIALS, as a Unix socket gives them."""
    seen, _, pid, _ = exchange(procs, sockdir, NOBODY, python_client("sendto", "after", read))
    scm = (1, 2)  # SOL_SOCKET, SCM_CREDENTIALS
    assert seen == [(b"real", ("127.0.0.53", 53), [scm], [(pid, NOBODY, NOBODY)])], seen


def test_program_turning_credentials_off(procs: Processes, sockdir: Path) -> None:
    """Asked for and turned off again: SO_PASSCRED reads 0 and no credentials come,
    though the library keeps them on for itself."""
    seen, _, _, _ = exchange(procs, sockdir, 0, python_client("sendto", "off", "64"))
    assert seen == [(b"real", ("127.0.0.53", 53), [], [])], seen

