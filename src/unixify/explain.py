"""``unixify explain``: which rule a socket call would match, and what would happen.

The shim's own matcher decides (src/shim/rules.c, glob.c, loaded as libunixify-match.so),
so a user can see why a socket was or was not converted without running the program,
and what explain says is what the shim does.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
from functools import lru_cache
from typing import Any, NamedTuple, Union

from unixify.encoding import encode_rules
from unixify.rules import Rule, errno_name, file_notes
from unixify.shim import ShimError, matcher_path

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class Query(NamedTuple):
    """A bind (``in``) or connect/send (``out``) of an IP or a Unix socket."""

    direction: str                 # "in" | "out"
    socket_type: str               # "stream" | "dgram"
    address: IPAddress | None = None
    port: int = 0
    unix_path: str | None = None   # a Unix socket's path (from-unix rules)
    abstract: str | None = None    # or its abstract name (from-abstract rules)

    def describe(self) -> str:
        kind = "tcp" if self.socket_type == "stream" else "udp"
        call = "bind" if self.direction == "in" else (
            "connect" if self.socket_type == "stream" else "connect/sendto")
        if self.unix_path is not None:
            return f"{call} of a Unix {self.socket_type} socket to {self.unix_path}"
        if self.abstract is not None:
            return f"{call} of a Unix {self.socket_type} socket to @{self.abstract}"
        return f"{call} of a {kind} socket to {self.address} port {self.port}"


# Why a rule does not match: rule_mismatch()'s answers (src/shim/shim.h, enum rule_miss).
(MISS_NONE, MISS_UNIX_ONLY, MISS_IP_ONLY, MISS_DIR, MISS_SYSTEMD, MISS_TYPE, MISS_FAMILY,
 MISS_UNIX_KIND, MISS_GLOB, MISS_ADDR, MISS_PORT) = range(11)
DIR_IN, DIR_OUT = 1, 2  # enum rule_dir

# Room for an expanded target: at most 432 bytes of template, each placeholder of two
# growing to at most 45 bytes.
TARGET_SIZE = 16384


class Match(NamedTuple):
    """The shim's answer: the first matching rule's index (-1: none), why each rule does
    or does not match (MISS_*), and the matching rule's expanded target ("" when it does
    not fit in a Unix address)."""

    first: int
    why: list[int]
    target: str


@lru_cache(maxsize=1)
def _unixify_match() -> Any:
    path = matcher_path()
    try:
        function = ctypes.CDLL(path).unixify_match
    except (OSError, AttributeError) as err:
        raise ShimError(f"the shim's matcher {path} cannot be loaded: {err}") from None
    function.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                         ctypes.c_char_p, ctypes.c_uint, ctypes.c_char_p, ctypes.c_int,
                         ctypes.POINTER(ctypes.c_ubyte), ctypes.c_size_t, ctypes.c_char_p,
                         ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def match(rules: list[Rule], query: Query) -> Match:
    """Ask the shim's own matcher (libunixify-match.so: rules.c, glob.c) about query."""
    encoded = os.fsencode(encode_rules(rules))
    why = (ctypes.c_ubyte * max(len(rules), 1))()
    target = ctypes.create_string_buffer(TARGET_SIZE)
    unix = query.unix_path if query.unix_path is not None else query.abstract
    index = _unixify_match()(
        encoded, len(encoded), DIR_IN if query.direction == "in" else DIR_OUT,
        socket.SOCK_STREAM if query.socket_type == "stream" else socket.SOCK_DGRAM,
        None if query.address is None else str(query.address).encode(), query.port,
        None if unix is None else os.fsencode(unix), int(query.abstract is not None),
        why, len(rules), target, TARGET_SIZE)
    if index < -1:
        raise ShimError("the shim's matcher cannot read these rules (a library from "
                        "another version?)")
    return Match(index, list(why)[:len(rules)], os.fsdecode(target.value))


def reason(rule: Rule, query: Query, miss: int) -> str:
    """What rule_mismatch()'s answer miss means for rule and query."""
    if miss == MISS_UNIX_ONLY:
        return "it matches Unix sockets only (from-unix/from-abstract)"
    if miss == MISS_IP_ONLY:
        return "it matches IP sockets only"
    if miss == MISS_DIR:
        return f"it is for '{rule.direction}' only"
    if miss == MISS_SYSTEMD:
        return f"'{rule.action}' applies to listening sockets only"
    if miss == MISS_TYPE:
        return f"it is for {'tcp' if rule.socket_type == 'stream' else 'udp'} only"
    if miss == MISS_FAMILY:
        return f"it is for {rule.family} sockets only"
    if miss == MISS_UNIX_KIND:
        return ("from-unix does not match abstract names" if rule.from_unix is not None
                else "from-abstract does not match paths")
    if miss == MISS_GLOB:
        return (f"{query.unix_path} does not match {rule.from_unix}"
                if query.unix_path is not None
                else f"@{query.abstract} does not match {rule.from_abstract}")
    if miss == MISS_ADDR:
        return f"address {query.address} is not in {rule.address}"
    assert miss == MISS_PORT and rule.ports is not None
    low, high = rule.ports
    return f"port {query.port} is not {low if low == high else f'{low}-{high}'}"


def outcome(rule: Rule | None, query: Query, target: str) -> str:
    call = "bind()" if query.direction == "in" else (
        "connect()" if query.socket_type == "stream" else "connect()/sendto()")
    is_unix = query.unix_path is not None or query.abstract is not None
    if rule is None or rule.action == "ignore":
        why = "no rule matches" if rule is None else "the rule says ignore"
        kind = "Unix" if is_unix else "IP"
        return f"{why}: {call} goes ahead unchanged on the {kind} socket"
    if rule.action in ("path", "abstract", "receive") and not target:
        return (f"{call} fails with ENAMETOOLONG ({errno.ENAMETOOLONG}): {rule.target} "
                "expands to more than a Unix socket address holds")
    if rule.action in ("path", "abstract"):
        where = f"Unix socket file {target}" if rule.action == "path" else f"abstract @{target}"
        if query.direction == "in":
            notes = [f"mode {rule.mode:04o}" if rule.mode is not None else "",
                     f"owner {rule.owner}" if rule.owner is not None else "",
                     f"group {rule.group}" if rule.group is not None else "",
                     "kept after close" if rule.noremove else ""]
            extra = ", ".join(note for note in notes if note)
            return (f"{call} binds a Unix {query.socket_type} socket at {where}"
                    + (f" ({extra})" if extra else ""))
        return f"{call} goes to {where}"
    if rule.action == "reject":
        assert rule.reject_errno is not None
        return f"{call} fails with {errno_name(rule.reject_errno)} ({rule.reject_errno})"
    if rule.action == "blackhole":
        return f"{call} succeeds on a Unix socket nobody can reach"
    if rule.action in ("vsock", "tipc", "fc"):
        if rule.action == "fc" and query.direction == "in":
            return f"{call} fails with EINVAL (a multiplexer only connects)"
        return f"{call} uses {rule.describe()} instead"
    if rule.action == "receive":
        return receive_outcome(rule, query, call, target)
    name = f" named {rule.systemd_name!r}" if rule.systemd_name else ""
    return f"{call} takes the {query.socket_type} socket{name} passed by systemd (LISTEN_FDS)"


def receive_outcome(rule: Rule, query: Query, call: str, target: str) -> str:
    """What a receive= rule does with a bind (target expanded): connections arrive from a
    dispatcher."""
    if query.socket_type != "stream":
        return f"{call} fails with EPROTOTYPE (receive= takes TCP connections only)"
    if rule.numbers:
        return (f"{call} registers slot {rule.numbers[0]} at the dispatcher's control "
                f"socket {target}; accept() takes the TCP connections it passes")
    return (f"{call} makes a receiver (Unix datagram socket) at {target}"
            f"{file_notes(rule)}; accept() takes the "
            "TCP connections a dispatcher passes there")


def explain(rules: list[Rule], query: Query, refusal: str | None = None) -> str:
    """Which rule matches query and what happens; refusal: why the launcher would not run
    the program at all (then that is the outcome)."""
    lines = [query.describe() + ":"]
    found = match(rules, query)
    last = found.first + 1 if found.first >= 0 else len(rules)
    for number, (rule, miss) in enumerate(zip(rules[:last], found.why), 1):
        lines.append(f"  rule {number} {rule.text!r}: "
                     + ("matches" if miss == MISS_NONE else f"no, {reason(rule, query, miss)}"))
    chosen = rules[found.first] if found.first >= 0 else None
    lines.append("=> " + (refusal or outcome(chosen, query, found.target)))
    return "\n".join(lines) + "\n"


def parse_query(words: list[str]) -> Query:
    """``in|out tcp|udp ADDRESS PORT``, or ``in|out tcp|udp unix PATH|abstract NAME``."""
    usage = ("expected: in|out tcp|udp ADDRESS PORT, or in|out tcp|udp unix PATH, "
             "or in|out tcp|udp abstract NAME")
    if len(words) != 4:
        raise ValueError(f"{usage}; got {' '.join(words) or 'nothing'!r}")
    direction, kind, where, last = words
    if direction not in ("in", "out"):
        raise ValueError(f"{direction!r} is not 'in' or 'out'")
    types = {"tcp": "stream", "stream": "stream", "udp": "dgram", "dgram": "dgram"}
    if kind not in types:
        raise ValueError(f"{kind!r} is not 'tcp' or 'udp'")
    if where == "unix":
        return Query(direction, types[kind], unix_path=os.path.abspath(last))
    if where == "abstract":
        return Query(direction, types[kind], abstract=last)
    try:
        address = ipaddress.ip_address(where)
    except ValueError:
        raise ValueError(f"{where!r} is not an IP address (or 'unix'/'abstract')") from None
    if not last.isascii() or not last.isdigit() or not 0 <= int(last) <= 65535:
        raise ValueError(f"port {last!r} is not a number from 0 to 65535")
    return Query(direction, types[kind], address=address, port=int(last))
