"""Attacks on this round's additions, as another local user would make them: each test
failed before its fix."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from conftest import Processes, unixify_command, wait_for
from test_receive import Sender, client, pass_fds


def test_inetd_survives_a_message_passing_a_pipe(procs: Processes, sockdir: Path) -> None:
    """Anyone who may write to inetd's receiver can pass any fd: a pipe (not a socket)
    is closed with one log line, and inetd goes on serving (it exited before)."""
    path = str(sockdir / "inetd.sock")
    inetd = procs.start([*unixify_command(), "inetd", "--receive", path, "--", "sh", "-c",
                         'echo "$TCPREMOTEIP"'])
    wait_for(lambda: os.path.exists(path), what="inetd's receiver")
    r, w = os.pipe()
    a, b = socket.socketpair()
    try:
        pass_fds(path, [r])
        pass_fds(path, [w, a.fileno()])  # two fds, one not a socket
        pass_fds(path, [a.fileno()])  # a socket, but not TCP
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()
    sender = Sender(path)
    assert client(sender.port, "127.0.0.61", b"")[1] == b"127.0.0.61\n"
    assert inetd.poll() is None
    inetd.terminate()
    assert inetd.wait(timeout=10) == 0
    sender.close()
