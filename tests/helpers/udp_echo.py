"""A UDP echo pair for the datagram tests.

    udp_echo.py server HOST PORT       echo every datagram back as "ADDR PORT|DATA";
                                       a failed reply is printed, not fatal
    udp_echo.py client HOST PORT TAG N send N datagrams tagged TAG, check each answer
                                       is ours, print "ok TAG" (exit 1 otherwise)
"""

from __future__ import annotations

import errno
import socket
import sys


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def server(host: str, port: int) -> None:
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.bind((host, port))
    print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(4096)
        try:
            s.sendto(f"{addr[0]} {addr[1]}|".encode() + data, addr)
        except OSError as exc:
            print(f"reply failed: {errno.errorcode[exc.errno or 0]}", flush=True)


def client(host: str, port: int, tag: str, count: int) -> int:
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.settimeout(5)
    seen = set()
    for i in range(count):
        s.sendto(f"{tag}:{i}".encode(), (host, port))
        data, addr = s.recvfrom(4096)
        if addr[:2] != (host, port):
            print(f"answer from {addr}", flush=True)
            return 1
        seen.add(data.split(b"|", 1)[0])
        if data.split(b"|", 1)[1] != f"{tag}:{i}".encode():
            print(f"crossed: {data!r}", flush=True)
            return 1
    if len(seen) != 1:  # one stable address per client, as the server saw it
        print(f"unstable sender: {seen}", flush=True)
        return 1
    print(f"ok {tag} {seen.pop().decode()}", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(client(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])))
