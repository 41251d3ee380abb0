"""unsock control files: a regular file where a socket file would be, naming a socket of
another family (AF_VSOCK, AF_TIPC) or a Firecracker-style multiplexer to use instead.

Layout (452 bytes, little-endian, packed), as unsock writes it::

      0  u64 magic 0x4b534e55 ("UNSK")     8  u64 options (bit 0: multiplexer)
     16  u32 proxy length  20  u32 destination length  24  u32 option count  28  u32 0
     32  128 bytes proxy sockaddr_un      160  128 bytes destination sockaddr
    288  4 x {u32 level, u32 name, 32 bytes value}: socket options       448  u32 0

The shim reads the same layout (src/shim/families.c).
"""

from __future__ import annotations

import os
import socket
import struct
from typing import NamedTuple

SIZE = 452
MAGIC = 0x4B534E55
OPTION_MULTIPLEXER = 1
MAX_OPTIONS = 4
AF_VSOCK = getattr(socket, "AF_VSOCK", 40)
AF_TIPC = getattr(socket, "AF_TIPC", 30)
VMADDR_CID_ANY = 0xFFFFFFFF
HEADER = struct.Struct("<QQIIII")
OPTION = struct.Struct("<II32s")


class ControlFileError(ValueError):
    """A control file that cannot be written or read; the message is complete."""


class Target(NamedTuple):
    kind: str                          # "vsock" | "tipc" | "fc"
    numbers: tuple[int, ...]           # vsock (cid, port); tipc five values; fc (port,)
    proxy: str | None = None           # fc: the multiplexer's Unix socket path
    options: tuple[tuple[int, int, bytes], ...] = ()

    def describe(self) -> str:
        if self.kind == "vsock":
            cid, port = self.numbers
            return f"vsock cid {'any' if cid == VMADDR_CID_ANY else cid} port {port}"
        if self.kind == "tipc":
            kind, scope, a, b, c = self.numbers
            return f"tipc addrtype {kind} scope {scope} values {a}:{b}:{c}"
        return f"vsock port {self.numbers[0]} through multiplexer {self.proxy}"


def _vsock_addr(cid: int, port: int) -> bytes:
    # struct sockaddr_vm: family, reserved1, port, cid, flags, zero[3]
    return struct.pack("<HHIIB3x", AF_VSOCK, 0, port, cid, 0)


def _tipc_addr(numbers: tuple[int, ...]) -> bytes:
    # struct sockaddr_tipc: family, addrtype, scope, then three u32 of the address union
    kind, scope, a, b, c = numbers
    return struct.pack("<HBbIII", AF_TIPC, kind, scope, a, b, c)


def encode(target: Target) -> bytes:
    options = 0
    proxy = b""
    if target.kind == "vsock":
        dest = _vsock_addr(*target.numbers)
    elif target.kind == "tipc":
        dest = _tipc_addr(target.numbers)
    else:
        assert target.proxy is not None
        path = target.proxy.encode()
        if len(path) > 107:
            raise ControlFileError(f"multiplexer path is {len(path)} bytes; at most 107")
        proxy = struct.pack("<H", socket.AF_UNIX) + path + b"\0"
        dest = _vsock_addr(VMADDR_CID_ANY, target.numbers[0])
        options = OPTION_MULTIPLEXER
    if len(target.options) > MAX_OPTIONS:
        raise ControlFileError(f"at most {MAX_OPTIONS} socket options fit in a control file")
    data = HEADER.pack(MAGIC, options, len(proxy), len(dest), len(target.options), 0)
    data += proxy.ljust(128, b"\0") + dest.ljust(128, b"\0")
    for level, name, value in target.options:
        data += OPTION.pack(level, name, value)
    data = data.ljust(SIZE, b"\0")
    assert len(data) == SIZE
    return data


def decode(data: bytes, origin: str = "control file") -> Target:
    if len(data) != SIZE:
        raise ControlFileError(f"{origin}: not a control file (those are {SIZE} bytes)")
    magic, options, proxy_len, dest_len, count, _ = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ControlFileError(f"{origin}: not a control file (no UNSK magic)")
    if not 2 <= dest_len <= 128 or proxy_len > 110 or count > MAX_OPTIONS:
        raise ControlFileError(f"{origin}: bad lengths in the header")
    dest = data[160:160 + dest_len]
    family = struct.unpack_from("<H", dest)[0]
    opts = tuple(OPTION.unpack_from(data, 288 + OPTION.size * i) for i in range(count))
    if options & OPTION_MULTIPLEXER:
        proxy = data[32:32 + proxy_len]
        if proxy_len <= 2 or struct.unpack_from("<H", proxy)[0] != socket.AF_UNIX or \
                family != AF_VSOCK:
            raise ControlFileError(f"{origin}: a multiplexer needs a Unix proxy and a vsock port")
        path = proxy[2:].split(b"\0", 1)[0].decode(errors="replace")
        port = struct.unpack_from("<I", dest, 4)[0]
        return Target("fc", (port,), path, opts)
    if family == AF_VSOCK:
        _, _, port, cid = struct.unpack_from("<HHII", dest)
        return Target("vsock", (cid, port), None, opts)
    if family == AF_TIPC:
        kind, scope, a, b, c = struct.unpack_from("<BbIII", dest, 2)
        return Target("tipc", (kind, scope, a, b, c), None, opts)
    raise ControlFileError(f"{origin}: destination family {family} is not vsock or tipc")


def create(path: str, target: Target) -> None:
    """Write a control file; never over an existing file."""
    data = encode(target)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise ControlFileError(f"{path} exists; not overwriting it") from None
    except OSError as exc:
        raise ControlFileError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def show(path: str) -> Target:
    try:
        with open(path, "rb") as handle:
            data = handle.read(SIZE + 1)
    except OSError as exc:
        raise ControlFileError(f"cannot read {path}: {exc.strerror}") from None
    return decode(data, path)
