"""IP- and TCP-level options of a converted socket and of a real one, side by side.

    sockopts.py HOST CONV_PORT REAL_PORT

Listens on HOST:CONV_PORT (the rules convert it, and a client to it) and on
HOST:REAL_PORT (plain TCP), connects a client to each, sets TCP_NODELAY and TCP_KEEPIDLE
on both ends of each connection, and prints as JSON what getsockopt answers on every
socket: {"conv"|"real": {"listener"|"client"|"accepted": {OPTION: hex or "errno N"}}}.
"""

from __future__ import annotations

import json
import socket
import sys

TCP, IP, IP6 = socket.IPPROTO_TCP, socket.IPPROTO_IP, socket.IPPROTO_IPV6
OPTIONS = {  # name: (level, number, buffer size)
    "IP_OPTIONS": (IP, 4, 40), "IP_TOS": (IP, 1, 4), "IP_TTL": (IP, 2, 4),
    "IP_MTU_DISCOVER": (IP, 10, 4), "IP_MTU": (IP, 14, 4), "IP_RECVERR": (IP, 11, 4),
    "IP_FREEBIND": (IP, 15, 4), "IP_MULTICAST_TTL": (IP, 33, 4),
    "IPV6_V6ONLY": (IP6, 26, 4), "IPV6_UNICAST_HOPS": (IP6, 16, 4),
    "IPV6_MTU": (IP6, 24, 4), "IPV6_MTU_DISCOVER": (IP6, 23, 4), "IPV6_TCLASS": (IP6, 67, 4),
    "TCP_NODELAY": (TCP, 1, 4), "TCP_MAXSEG": (TCP, 2, 4), "TCP_CORK": (TCP, 3, 4),
    "TCP_KEEPIDLE": (TCP, 4, 4), "TCP_KEEPINTVL": (TCP, 5, 4), "TCP_KEEPCNT": (TCP, 6, 4),
    "TCP_SYNCNT": (TCP, 7, 4), "TCP_LINGER2": (TCP, 8, 4), "TCP_DEFER_ACCEPT": (TCP, 9, 4),
    "TCP_CONGESTION": (TCP, 13, 16), "TCP_USER_TIMEOUT": (TCP, 18, 4),
    "TCP_FASTOPEN": (TCP, 23, 4), "TCP_NOTSENT_LOWAT": (TCP, 25, 4),
}


def ask(s: socket.socket) -> dict[str, str | int]:
    out: dict[str, str | int] = {}
    for name, (level, number, size) in OPTIONS.items():
        try:
            out[name] = s.getsockopt(level, number, size).hex()
        except OSError as exc:
            out[name] = f"errno {exc.errno}"
    info = s.getsockopt(TCP, socket.TCP_INFO, 512)
    out["TCP_INFO.state"] = info[0]
    out["TCP_INFO.nonzero"] = sum(1 for b in info[1:] if b)
    return out


def main() -> None:
    host, conv_port, real_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    result = {}
    for kind, port in (("conv", conv_port), ("real", real_port)):
        listener = socket.socket(family)
        listener.bind((host, port))
        listener.listen()
        client = socket.socket(family)
        client.connect((host, port))
        accepted, _ = listener.accept()
        for s in (client, accepted):  # options the program set
            s.setsockopt(TCP, socket.TCP_NODELAY, 1)
            s.setsockopt(TCP, socket.TCP_KEEPIDLE, 77)
        result[kind] = {"listener": ask(listener), "client": ask(client),
                        "accepted": ask(accepted)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
