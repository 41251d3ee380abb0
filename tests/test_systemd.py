"""systemd socket activation ('systemd' rules) with the real systemd-socket-activate."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from conftest import (
    HELPERS,
    Processes,
    activate,
    free_port,
    preloaded_env,
    unix_get,
    unixify_command,
    wait_for,
)

from unixify.encoding import encode_rules
from unixify.rules import parse_rule


def listening(port: int, kind: int = socket.SOCK_STREAM) -> bool:
    """Is port taken?  Asked without connecting: a connection would be served."""
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_threaded_http_server_on_a_passed_tcp_socket(procs: Processes, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("activated\n")
    port, unused = free_port(), free_port()
    activate(procs, [f"127.0.0.1:{port}"], ["in,tcp,systemd"],
             [sys.executable, "-m", "http.server", "-d", str(tmp_path), "--bind",
              "127.0.0.1", str(unused)])
    wait_for(lambda: listening(port), what="the passed socket")
    bodies: list[bytes] = []

    def fetch() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            bodies.append(data)

    threads = [threading.Thread(target=fetch) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(bodies) == 20 and all(b.endswith(b"activated\n") for b in bodies)
    assert not listening(unused)  # the program's own port was never opened


def test_named_unix_sockets_pick_by_fdname(procs: Processes, sockdir: Path,
                                           tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("picked by name\n")
    first, second = sockdir / "a.sock", sockdir / "b.sock"
    port = free_port()
    proc = activate(procs, [str(first), str(second)], ["in,tcp,systemd=web"],
                    [sys.executable, "-m", "http.server", "-d", str(tmp_path), str(port)],
                    extra=["--fdname=admin:web"])
    wait_for(second.exists, what="the activator's socket")
    reply = unix_get(second, b"GET /index.html HTTP/1.0\r\n\r\n")
    assert reply.endswith(b"picked by name\n")
    # The other passed socket stays unused (and open, owned by the activator).
    assert proc.poll() is None


def test_program_that_closes_every_fd_first(procs: Processes, probe: str) -> None:
    port = free_port()
    proc = activate(procs, [f"127.0.0.1:{port}"], ["in,tcp,systemd"],
                    [probe, "closeall", "127.0.0.1", str(free_port())])
    wait_for(lambda: listening(port), what="the passed socket")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert s.recv(100) == b"hello\n"
    out, err = proc.communicate(timeout=10)
    assert "child_listen_fds=none" in out  # LISTEN_* not leaked to children
    assert "child_sockets=1" in out        # nor the passed socket, only the listener
    assert "error=" not in out, (out, err)


def test_passed_datagram_sockets_ip_and_unix(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    activate(procs, [f"127.0.0.1:{port}"], ["in,udp,systemd"],
             [sys.executable, str(HELPERS / "udp_echo.py"), "server", "127.0.0.1",
              str(free_port())], extra=["--datagram"])
    wait_for(lambda: listening(port, socket.SOCK_DGRAM), what="the passed socket")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(10)
        c.sendto(b"over udp", ("127.0.0.1", port))
        reply, _ = c.recvfrom(100)
        assert reply.endswith(b"|over udp")
    path = sockdir / "dgram.sock"
    activate(procs, [str(path)], ["in,udp,systemd"],
             [sys.executable, str(HELPERS / "udp_echo.py"), "server", "127.0.0.1",
              str(free_port())], extra=["--datagram"])
    wait_for(path.exists, what="the activator's socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as c:
        c.bind(str(sockdir / "client.sock"))
        c.settimeout(10)
        c.sendto(b"over unix", str(path))
        reply, _ = c.recvfrom(100)
        assert reply.startswith(b"127.0.0.1 ") and reply.endswith(b"|over unix")


def test_systemd_rule_without_passed_sockets_is_a_clear_error(probe: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    result = subprocess.run([*unixify_command(), "-r", "in,systemd", probe, "server",
                             "127.0.0.1", "1"], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "LISTEN_FDS is not set" in result.stderr
    # Set by hand for another process: the shim does not take fd 3, and bind fails
    # with a log line rather than aborting.
    env = preloaded_env(LISTEN_FDS="1", LISTEN_PID="1",
                        UNIXIFY_RULES=encode_rules([parse_rule("in,systemd")]))
    result = subprocess.run([probe, "server", "127.0.0.1", str(free_port())],
                            capture_output=True, text=True, env=env, timeout=10)
    assert "error=bind:Cannot assign requested address" in result.stdout, result
    assert "no stream socket was passed" in result.stderr
