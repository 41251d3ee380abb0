"""A minimal receiver of the dispatcher's connections, for the tests.

  dispatch_receiver.py a PATH [--slow SECONDS] [--stuck] [--http] [--tag TAG]
  dispatch_receiver.py b CONTROL SLOT [--tag TAG] [--reconnect]

Protocol A: a Unix datagram socket at PATH; each message is one byte with SCM_RIGHTS
carrying one fd.  Protocol B: register SLOT at the SOCK_SEQPACKET CONTROL socket
("01 00 00 00" + slot, big endian; "80 00 00 00" back), then "03 00 00 00" + fd per
connection.  Prints "ready" (or "refused"), then per connection one line
"conn PEER_IP PEER_PORT LOCAL_IP LOCAL_PORT", and answers the client with the line
"TAG PEER_IP PEER_PORT LOCAL_IP LOCAL_PORT" (or, with --http, serves it as
http.server does, which logs the client's real address).
"""

from __future__ import annotations

import array
import contextlib
import http.server
import os
import socket
import sys
import threading
import time


def fds_of(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", data[:len(data) - len(data) % 4]))
    return fds


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"http {self.client_address[0]} {format % args}\n")
        sys.stdout.flush()


def serve_http(conn: socket.socket) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.finish_request(conn, conn.getpeername())
    conn.close()


def handle(fd: int, tag: str, use_http: bool) -> None:
    conn = socket.socket(fileno=fd)
    if conn.type != socket.SOCK_STREAM:
        conn.close()
        return
    peer, local = conn.getpeername(), conn.getsockname()
    line = f"{peer[0]} {peer[1]} {local[0]} {local[1]}"
    sys.stdout.write(f"conn {line}\n")
    sys.stdout.flush()
    if use_http:
        threading.Thread(target=serve_http, args=(conn,), daemon=True).start()
        return
    with contextlib.suppress(OSError):
        conn.sendall(f"{tag} {line}\n".encode())
    conn.close()


def receive_a(path: str, slow: float, stuck: bool, tag: str, use_http: bool) -> None:
    if os.path.lexists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    print("ready", flush=True)
    while stuck:
        time.sleep(3600)
    while True:
        if slow:
            time.sleep(slow)
        _, ancillary, _, _ = sock.recvmsg(16, socket.CMSG_SPACE(4 * 4))
        for fd in fds_of(ancillary):
            handle(fd, tag, use_http)


def register(control: str, slot: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(control)
    sock.send(b"\x01\x00\x00\x00" + slot.to_bytes(4, "big"))
    if sock.recv(16) != b"\x80\x00\x00\x00":
        sock.close()
        return None
    return sock


def receive_b(control: str, slot: int, tag: str, reconnect: bool) -> None:
    while True:
        try:
            sock = register(control, slot)
        except OSError:
            sock = None
            if not reconnect:
                raise
        if sock is None and not reconnect:
            print("refused", flush=True)
            return
        if sock is None:
            time.sleep(0.1)
            continue
        print("ready", flush=True)
        while True:
            data, ancillary, _, _ = sock.recvmsg(16, socket.CMSG_SPACE(4 * 4))
            fds = fds_of(ancillary)
            if not data and not fds:
                break  # the dispatcher went away
            if data[:4] != b"\x03\x00\x00\x00":
                for fd in fds:
                    os.close(fd)
                continue
            for fd in fds:
                handle(fd, tag, False)
        sock.close()
        print("lost", flush=True)
        if not reconnect:
            return


def option(name: str, default: str = "") -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main() -> None:
    tag = option("--tag", "hello")
    if sys.argv[1] == "a":
        receive_a(sys.argv[2], float(option("--slow", "0")), "--stuck" in sys.argv, tag,
                  "--http" in sys.argv)
    else:
        receive_b(sys.argv[2], int(sys.argv[3]), tag, "--reconnect" in sys.argv)


if __name__ == "__main__":
    main()
