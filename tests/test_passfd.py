"""Converted sockets handed between processes: over SCM_RIGHTS (HAProxy's -x and its
master-worker reloads, Node's cluster), paused and resumed around a reload (HAProxy's
-sf), and the client ports a server's forked workers report."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    HELPERS,
    Processes,
    compile_c,
    free_port,
    read_until,
    run_wrapped,
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


def test_pause_and_resume_listener(procs: Processes, sockdir: Path,
                                   helper_dir: Path) -> None:
    """connect(AF_UNSPEC) pauses a listener (HAProxy's reload): the path is released;
    listen() resumes it there, still registered with epoll; a live socket in the way
    makes the resume fail as TCP's would."""
    pause = compile_c(HELPERS / "pause.c", helper_dir / "pause")
    port, sock = free_port(), sockdir / "l.sock"
    proc = procs.wrapped([f"in,addr=127.0.0.1,port={port},path={sock}"],
                         [pause, "127.0.0.1", str(port), str(sock)], stdin=subprocess.PIPE)
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
