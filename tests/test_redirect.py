"""from-unix and from-abstract: programs that use Unix sockets already, redirected."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import (
    Processes,
    read_until,
    require_tool,
    run_wrapped,
    wait_for,
    wait_for_socket,
)

UNIX_ECHO = """\
import socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "stream" else socket.SOCK_DGRAM
name = "\\0" + sys.argv[2][1:] if sys.argv[2].startswith("@") else sys.argv[2]
s = socket.socket(socket.AF_UNIX, kind)
s.bind(name)
print("bound", flush=True)
if kind == socket.SOCK_STREAM:
    s.listen()
    c, _ = s.accept()
    c.sendall(b"echo:" + c.recv(100))
else:
    data, peer = s.recvfrom(100)
    s.sendto(b"echo:" + data, peer)
"""

UNIX_CLIENT = """\
import socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "stream" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_UNIX, kind)
s.settimeout(5)
name = "\\0" + sys.argv[2][1:] if sys.argv[2].startswith("@") else sys.argv[2]
if kind == socket.SOCK_STREAM:
    s.connect(name)
    s.sendall(b"hi")
else:
    s.bind(sys.argv[3])
    s.sendto(b"hi", name)
print(s.recv(100).decode())
"""


def test_hard_coded_paths_redirected_with_nc_and_socat(procs: Processes, sockdir: Path) -> None:
    """nc listens on the path it was given and is moved elsewhere; socat, told another
    path, is moved onto the real one."""
    nc = require_tool("nc")
    socat = require_tool("socat")
    real = sockdir / "real.sock"
    server = procs.wrapped([f"in,from-unix={sockdir}/hardcoded-*.sock,path={real}"],
                           [nc, "-lU", str(sockdir / "hardcoded-server.sock")])
    wait_for_socket(real)
    assert not (sockdir / "hardcoded-server.sock").exists()
    result = run_wrapped([f"out,from-unix=client-view.sock,path={real}"],
                         [socat, "-t", "2", "-", f"UNIX-CONNECT:{sockdir}/client-view.sock"],
                         input="through two redirects\n")
    assert result.returncode == 0, result
    out, _ = server.communicate(timeout=10)
    assert out == "through two redirects\n"
    wait_for(lambda: not real.exists(), what="the socket file to go with nc")


def test_datagram_paths_both_ways(procs: Processes, sockdir: Path) -> None:
    procs.wrapped([f"in,dgram,from-unix=**/wanted.sock,path={sockdir}/actual.sock"],
                  [sys.executable, "-c", UNIX_ECHO, "dgram", str(sockdir / "wanted.sock")])
    wait_for_socket(sockdir / "actual.sock")
    assert not (sockdir / "wanted.sock").exists()
    client = run_wrapped([f"out,udp,from-unix={sockdir}/wanted.sock,path={sockdir}/actual.sock"],
                         [sys.executable, "-c", UNIX_CLIENT, "dgram",
                          str(sockdir / "wanted.sock"), str(sockdir / "me.sock")])
    assert client.stdout.strip() == "echo:hi", client


def test_abstract_names_on_both_sides(procs: Processes) -> None:
    tag = f"ufy-{os.getpid()}"
    server = procs.wrapped([f"in,from-abstract={tag}-old,abstract={tag}-new"],
                           [sys.executable, "-c", UNIX_ECHO, "stream", f"@{tag}-old"])
    read_until(server, "bound")
    # A native client finds it under the new name only.
    with socket.socket(socket.AF_UNIX) as probe:
        assert probe.connect_ex(f"\0{tag}-old") != 0
    client = run_wrapped([f"out,from-abstract={tag}-*,abstract={tag}-new"],
                         [sys.executable, "-c", UNIX_CLIENT, "stream", f"@{tag}-old"])
    assert client.stdout.strip() == "echo:hi", client


def test_abstract_to_path_and_path_to_abstract(procs: Processes, sockdir: Path) -> None:
    tag = f"ufy-{os.getpid()}"
    procs.wrapped([f"in,from-abstract={tag}-svc,path={sockdir}/svc.sock"],
                  [sys.executable, "-c", UNIX_ECHO, "stream", f"@{tag}-svc"])
    wait_for_socket(sockdir / "svc.sock")
    client = run_wrapped([f"out,from-unix={sockdir}/elsewhere.sock,path={sockdir}/svc.sock"],
                         [sys.executable, "-c", UNIX_CLIENT, "stream",
                          str(sockdir / "elsewhere.sock")])
    assert client.stdout.strip() == "echo:hi", client


def test_reject_bind_and_connect_and_relative_paths(sockdir: Path) -> None:
    code = ("import socket\n"
            "s=socket.socket(socket.AF_UNIX)\n"
            "for call in (s.bind, s.connect):\n"
            "    try: call('rel.sock'); print('ok')\n"
            "    except OSError as e: print(e.errno)\n")
    result = run_wrapped([f"from-unix={sockdir}/rel.sock,reject=EPERM"],
                         [sys.executable, "-c", code], cwd=sockdir)
    assert result.stdout.split() == ["1", "1"], result
    assert not (sockdir / "rel.sock").exists()


def test_rules_for_ip_sockets_leave_unix_sockets_alone(sockdir: Path) -> None:
    """A rule without from-unix never touches a program's own Unix sockets."""
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); print(s.getsockname())\n")
    result = run_wrapped([f"path={sockdir}/all-ip.sock"],
                         [sys.executable, "-c", code, str(sockdir / "mine.sock")])
    assert result.stdout.strip() == str(sockdir / "mine.sock"), result


def test_noremove_keeps_a_redirected_file(sockdir: Path) -> None:
    code = "import socket\ns=socket.socket(socket.AF_UNIX); s.bind('/nonexistent/x.sock')\n"
    for extra, stays in (("", False), (",noremove", True)):
        result = run_wrapped([f"in,from-unix=/nonexistent/*,path={sockdir}/kept.sock{extra}"],
                             [sys.executable, "-c", code])
        assert result.returncode == 0, result
        assert (sockdir / "kept.sock").exists() is stays
    subprocess.run(["rm", "-f", str(sockdir / "kept.sock")], check=True)
