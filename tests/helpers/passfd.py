"""Pass sockets over SCM_RIGHTS, as servers hand listeners and connections to each other.

    passfd.py send CHANNEL KIND [HOST PORT | PATH]   make a socket, hand it over, wait
    passfd.py recv CHANNEL [hold]                    receive, print what each one is
                                                     (hold: keep them until stdin ends)

KIND: listener, accepted (a connection accepted on a listener; the test connects),
client (connected to HOST PORT), fresh (a socket of HOST's family, neither bound nor
connected), pair (one end of a socketpair), unix (a plain Unix
listener at PATH), moved (a Unix listener named PATH whose file was moved away and
replaced by another socket's).  The receiver prints one JSON line per socket.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def ip_socket(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)


def make(kind: str, args: list[str]) -> list[socket.socket]:
    if kind == "pair":
        return list(socket.socketpair())[:1]
    if kind in ("unix", "moved"):
        s = socket.socket(socket.AF_UNIX)
        s.bind(args[0])
        s.listen()
        if kind == "unix":
            return [s]
        os.rename(args[0], args[0] + ".moved")
        other = socket.socket(socket.AF_UNIX)
        other.bind(args[0])
        other.listen()
        return [s, other]  # the second keeps the file at PATH bound
    if kind == "fresh":
        return [ip_socket(args[0])]
    host, port = args[0], int(args[1])
    s = ip_socket(host)
    if kind == "client":
        s.connect((host, port))
        return [s]
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen()
    if kind == "listener":
        return [s]
    print("listening", flush=True)
    conn, _ = s.accept()
    return [conn, s]


def send(channel: str, kind: str, args: list[str]) -> None:
    socks = make(kind, args)
    server = socket.socket(socket.AF_UNIX)
    server.bind(channel)
    server.listen()
    print("ready", flush=True)
    conn, _ = server.accept()
    socket.send_fds(conn, [b"x"], [socks[0].fileno()])
    conn.recv(1)


def describe(fd: int) -> dict[str, object]:
    s = socket.socket(fileno=fd)
    out: dict[str, object] = {"family": s.family.name, "type": s.type.name,
                              "acceptconn": s.getsockopt(socket.SOL_SOCKET,
                                                         socket.SO_ACCEPTCONN)}
    for what in ("sockname", "peername"):
        try:
            out[what] = getattr(s, "get" + what)()
        except OSError as e:
            out[what] = f"error {e.errno}"
    s.detach()
    return out


def recv(channel: str, hold: bool) -> None:
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(channel)
        _, fds, _, _ = socket.recv_fds(c, 1, 8)
        for fd in fds:
            print(json.dumps(describe(fd)), flush=True)
        c.send(b"y")
    print("done", flush=True)
    if hold:
        sys.stdin.read()


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        recv(sys.argv[2], sys.argv[3:] == ["hold"])
