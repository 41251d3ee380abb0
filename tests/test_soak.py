"""Load over time: a wrapped threaded server and a wrapped threaded client, both converted,
for UNIXIFY_SOAK_SECONDS (3 by default, so CI runs the short form)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Processes, free_port, parse_kv, wait_for_socket

SERVER = textwrap.dedent("""\
    import socketserver, sys
    class Echo(socketserver.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                self.wfile.write(line)
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", int(sys.argv[1])), Echo) as srv:
        srv.serve_forever()
""")

CLIENT = textwrap.dedent("""\
    import socket, sys, threading, time
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    done, failed = [0], []
    lock = threading.Lock()
    def worker(n):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                    c.sendall(b"ping %d\\n" % n)
                    if c.makefile("rb").readline() != b"ping %d\\n" % n:
                        raise RuntimeError("wrong echo")
                with lock:
                    done[0] += 1
            except Exception as exc:
                with lock:
                    failed.append(repr(exc))
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(f"done={done[0]}")
    print(f"failed={len(failed)}")
    print(f"first_failure={failed[:1]}")
""")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.soak
def test_soak_converted_server_and_client(procs: Processes, sockdir: Path) -> None:
    seconds = float(os.environ.get("UNIXIFY_SOAK_SECONDS", "3"))
    port = free_port()
    sock = sockdir / "echo.sock"
    server = procs.wrapped([f"in,port={port},path={sock}"],
                           [sys.executable, "-c", SERVER, str(port)])
    wait_for_socket(sock)
    baseline = open_fds(server.pid)  # unixify execs the program: same pid
    client = procs.wrapped([f"out,port={port},path={sock}"],
                           [sys.executable, "-c", CLIENT, str(port), str(seconds)])
    out, err = client.communicate(timeout=seconds + 60)
    info = parse_kv(out)
    assert info["failed"] == "0", info["first_failure"] + err
    assert int(info["done"]) > 50 * seconds
    assert open_fds(server.pid) <= baseline + 2  # connections closed, nothing leaked
    assert sock.is_socket()

