"""Converted datagram clients answered across users: a converted UDP client has an
autobound abstract address, which any local server can reply to as it could reply to a
UDP port (memcached after dropping privileges, a UDP server run as uid 65534), and it
makes no file anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    HELPERS,
    Processes,
    free_port,
    read_until,
    require_tool,
    run_wrapped,
    unixify_command,
    wait_for_socket,
)
from test_reach import shim_copy

NOBODY = 65534

# Talks to memcached's UDP port: each request and reply carries the 8-byte frame header
# (request id, sequence number, datagram count, reserved).
MEMCACHED_CLIENT = """\
import socket, struct, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for rid, cmd in ((7, b"set k 0 0 5\\r\\nhello\\r\\n"), (8, b"get k\\r\\n")):
    s.sendto(struct.pack("!HHHH", rid, 0, 1, 0) + cmd, ("127.0.0.1", port))
    data, addr = s.recvfrom(4096)
    print(struct.unpack("!HHHH", data[:8])[0], repr(data[8:]), addr[0], flush=True)
"""

# One datagram to the echo server and its answer, over a connected or unconnected socket.
ECHO_CLIENT = """\
import socket, sys
port, how = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
if how == "connect":
    s.connect(("127.0.0.1", port)); s.send(b"hi"); data = s.recv(100)
else:
    s.sendto(b"hi", ("127.0.0.1", port)); data = s.recvfrom(100)[0]
print(data.split(b"|")[1].decode(), flush=True)
"""


def test_memcached_that_dropped_privileges_answers(procs: Processes, sockdir: Path) -> None:
    """memcached -u nobody serves UDP on a converted socket and answers a converted
    client run by root.  (The old client's reply address was a file in root's 0700
    directory: memcached's replies failed with EACCES, the client timed out.)"""
    memcached = require_tool("memcached")
    os.chown(sockdir, NOBODY, NOBODY)  # it binds after dropping privileges
    port = free_port()
    sock = sockdir / "mc.sock"
    procs.wrapped([f"in,udp,path={sock}"],
                  [memcached, "-u", "nobody", "-U", str(port), "-p", "0", "-l", "127.0.0.1"])
    wait_for_socket(sock)
    assert sock.stat().st_uid == NOBODY
    client = run_wrapped([f"out,udp,port={port},path={sock}"],
                         [sys.executable, "-c", MEMCACHED_CLIENT, str(port)], timeout=30)
    assert client.stdout.splitlines() == [
        "7 b'STORED\\r\\n' 127.0.0.1",
        "8 b'VALUE k 0 5\\r\\nhello\\r\\nEND\\r\\n' 127.0.0.1"], client


@pytest.mark.parametrize("how", ["sendto", "connect"])
def test_udp_server_of_another_user_answers(procs: Processes, sockdir: Path,
                                            how: str) -> None:
    """A UDP echo server running as uid 65534 on a converted socket answers a converted
    client run by root, connected or not.  (The old code: no answer, the server's
    replies failed with EACCES.)"""
    setpriv = require_tool("setpriv")
    sockdir.chmod(0o755)
    os.chown(sockdir, NOBODY, NOBODY)
    echo = str(shutil.copy(HELPERS / "udp_echo.py", sockdir / "udp_echo.py"))
    port = free_port()
    sock = sockdir / "echo.sock"
    env = {**os.environ, "UNIXIFY_SHIM": shim_copy(str(sockdir), 0o755)}
    server = procs.wrapped([f"in,udp,path={sock}"],
                           [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}",
                            "--clear-groups", sys.executable, echo, "server", "127.0.0.1",
                            str(port)], env=env)
    read_until(server, "ready")
    client = run_wrapped([f"out,udp,port={port},path={sock}"],
                         [sys.executable, "-c", ECHO_CLIENT, str(port), how], timeout=30)
    assert client.stdout == "hi\n", client
    server.kill()
    out, _ = server.communicate(timeout=10)
    assert "reply failed" not in out


# A native Unix datagram echo server: no shim, it answers whatever address recvfrom gives.
NATIVE_ECHO = """\
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(100)
    s.sendto(b"native|" + data, addr)
"""


def test_native_unix_server_of_another_user_answers(procs: Processes, sockdir: Path) -> None:
    """A server that speaks Unix datagrams itself, unwrapped and running as uid 65534,
    answers a converted client run by root at the address its recvfrom reports.  (The
    old code: its reply failed with EACCES.)"""
    setpriv = require_tool("setpriv")
    sockdir.chmod(0o755)
    os.chown(sockdir, NOBODY, NOBODY)
    sock = sockdir / "native.sock"
    server = procs.start([setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                          sys.executable, "-c", NATIVE_ECHO, str(sock)])
    read_until(server, "ready")
    port = free_port()
    client = run_wrapped([f"out,udp,port={port},path={sock}"],
                         [sys.executable, "-c", ECHO_CLIENT, str(port), "sendto"], timeout=30)
    assert client.stdout == "hi\n", client


# Holds a converted socket that has sent a datagram until a line on stdin.
HOLDER = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"x", ("127.0.0.1", int(sys.argv[1])))
print("held", s.getsockname()[1] != 0, flush=True)
sys.stdin.readline()
"""


def tree(top: Path) -> list[str]:
    return sorted(str(p.relative_to(top)) for p in top.rglob("*"))


def test_client_makes_no_file(procs: Processes, sockdir: Path) -> None:
    """Nothing appears in $XDG_RUNTIME_DIR (here one another user owns), $TMPDIR or
    /tmp for a converted client, and its address is an abstract name.  (The old code
    made a private directory with a socket file in /tmp.)"""
    runtime, tmpdir = sockdir / "run", sockdir / "tmp"
    runtime.mkdir()
    tmpdir.mkdir()
    os.chown(runtime, NOBODY, NOBODY)
    port = free_port()
    client = procs.wrapped([f"out,udp,port={port},path={sockdir / 'none.sock'}"],
                           [sys.executable, "-c", HOLDER, str(port)], stdin=subprocess.PIPE,
                           env={**os.environ, "XDG_RUNTIME_DIR": str(runtime),
                                "TMPDIR": str(tmpdir)})
    read_until(client, "held True")
    made = tree(runtime), tree(tmpdir), list(Path("/tmp").glob(f"unixify.{client.pid}.*"))
    inodes = {os.stat(f"/proc/{client.pid}/fd/{fd}").st_ino
              for fd in os.listdir(f"/proc/{client.pid}/fd")}
    bound = [line.split()[-1] for line in Path("/proc/net/unix").read_text().splitlines()[1:]
             if len(line.split()) == 8 and int(line.split()[6]) in inodes]
    client.communicate("\n", timeout=10)
    assert made == ([], [], [])
    assert len(bound) == 1 and bound[0].startswith("@"), bound


# A tmpfs of nobody's on /tmp; a shim under the old /tmp (a sanitizer build) is copied
# to its place there from the old /tmp, still the working directory.
MOUNT_HOSTILE_TMP = """\
cd /tmp && mount -t tmpfs -o uid=65534,mode=1777 ufy /tmp || exit 1
for f in $UNIXIFY_SHIM; do
    case $f in /tmp/*) mkdir -p "${f%/*}" && cp "./${f#/tmp/}" "$f" || exit 1;; esac
done
cd / && exec "$@"
"""


def test_client_needs_no_trusted_directory() -> None:
    """/tmp owned by another user (a tmpfs of theirs, in a mount namespace of the
    test's own) and no $XDG_RUNTIME_DIR: a converted client still sends, as over UDP
    to a port nobody listens on.  (The old code had nowhere to put its reply address:
    EACCES.)"""
    unshare = require_tool("unshare")
    code = ("import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "try:\n"
            "    print('sent', s.sendto(b'x', ('127.0.0.1', 9)))\n"
            "except OSError as e:\n"
            "    print('errno', e.errno)\n")
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    result = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c",
         MOUNT_HOSTILE_TMP, "sh",
         *unixify_command(), "-r", "out,udp,port=9,path=/tmp/x.sock", "--",
         sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30, env=env, cwd="/")
    assert result.stdout.split() == ["sent", "1"], result
    assert result.returncode == 0, result


def test_reply_from_another_network_namespace_is_lost(procs: Processes, sockdir: Path,
                                                      netns: list[str]) -> None:
    """The documented limit: abstract names belong to a network namespace.  A server in
    another one, sharing the socket file, gets the client's datagram but its reply goes
    nowhere (dropped, as UDP drops it; -vv says so)."""
    port = free_port()
    sock = sockdir / "ns.sock"
    server = procs.start([*netns, *unixify_command(), "-vv", "-r", f"in,udp,path={sock}",
                          "--", sys.executable, str(HELPERS / "udp_echo.py"), "server",
                          "127.0.0.1", str(port)], stderr=subprocess.STDOUT)
    read_until(server, "ready")
    client = run_wrapped([f"out,udp,port={port},path={sock}"],
                         [sys.executable, "-c", ECHO_CLIENT, str(port), "sendto"], timeout=30)
    assert "TimeoutError" in client.stderr, client
    server.kill()
    out, _ = server.communicate(timeout=10)
    assert "nobody listens at (abstract); datagram dropped" in out, out
