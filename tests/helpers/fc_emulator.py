"""A local stand-in for a Firecracker vsock multiplexer: a Unix stream socket on which a
client writes "CONNECT <port>\\n" and, if a guest listens on that port, gets
"OK <host port>\\n" and then the guest's stream.  Here the "guest" greets and echoes.

    fc_emulator.py SOCKET PORT...    serve; ports not listed are refused (hang up)
"""

from __future__ import annotations

import os
import socket
import sys
import threading


def serve(conn: socket.socket, ports: set[int]) -> None:
    with conn:
        line = b""
        while not line.endswith(b"\n") and len(line) < 64:
            chunk = conn.recv(1)
            if not chunk:
                return
            line += chunk
        words = line.decode(errors="replace").split()
        if len(words) != 2 or words[0] != "CONNECT" or not words[1].isdigit() or \
                int(words[1]) not in ports:
            print(f"refused {line!r}", flush=True)
            return
        # The OK line and the guest's first bytes in one write: the client must not
        # read past the end of the OK line.
        conn.sendall(f"OK 1073741824\nguest port {words[1]} says hi\n".encode())
        while data := conn.recv(4096):
            conn.sendall(data)


def main() -> None:
    path, ports = sys.argv[1], {int(p) for p in sys.argv[2:]}
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, ports), daemon=True).start()


if __name__ == "__main__":
    main()
