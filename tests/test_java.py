"""A JVM, wrapped: com.sun.net.httpserver on a converted socket, and java.net.http
clients reaching it.  The JVM's many threads, dual-stack IPv6 sockets and its own
epoll-based I/O are where preload tools break."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import (
    HELPERS,
    Processes,
    free_port,
    read_until,
    require_tool,
    run_wrapped,
    unix_get,
    wait_for_socket,
)


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    javac = require_tool("javac")
    out = tmp_path_factory.mktemp("java")
    sources = sorted(str(p) for p in (HELPERS / "java").glob("*.java"))
    subprocess.run([javac, "-d", str(out), *sources], check=True, timeout=120)
    return out


def test_java_server_and_client_over_a_unix_socket(procs: Processes, sockdir: Path,
                                                   classes: Path) -> None:
    java = require_tool("java")
    port = free_port()
    sock = sockdir / "java.sock"
    server = procs.wrapped([f"in,tcp,port={port},path={sock}"],
                           [java, "-cp", str(classes), "HelloServer", str(port)])
    read_until(server, "ready", timeout=60)
    wait_for_socket(sock)
    reply = unix_get(sock, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    # a client on a Unix socket is a local client; the JVM's IPv4-mapped listener sees it
    # as 127.0.0.1
    assert reply.endswith(b"hello from java, you are 127.0.0.1\n"), reply
    client = run_wrapped([f"out,tcp,port={port},path={sock}"],
                         [java, "-cp", str(classes), "HelloClient",
                          f"http://127.0.0.1:{port}/", "20"], timeout=120)
    assert client.returncode == 0, client
    assert client.stdout.count("200 hello from java") == 20, client
    assert server.poll() is None
