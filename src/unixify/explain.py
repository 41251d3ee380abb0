"""``unixify explain``: which rule a socket call would match, and what would happen.

The matching here follows the shim's (src/shim/rules.c, glob.c) rule by rule, so a
user can see why a socket was or was not converted without running the program.
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from typing import NamedTuple, Union

from unixify.rules import Rule, errno_name, file_notes

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


# Elements of a from-unix glob (see glob.c for the syntax).
LITERAL, ANY, CLASS, STAR, DSTAR, DSTAR_SLASH = range(6)
SKIPPABLE = (STAR, DSTAR, DSTAR_SLASH)


class _Element(NamedTuple):
    kind: int
    accepts: frozenset[int] = frozenset()   # the bytes a LITERAL, ANY or CLASS consumes


_ALL_BUT_SLASH = frozenset(range(256)) - {ord("/")}


def _class_end(pattern: bytes, start: int) -> int:
    """Index just past the ']' closing the bracket expression at start, or -1."""
    i = start + 1
    if i < len(pattern) and pattern[i:i + 1] == b"!":
        i += 1
    first = True
    while i < len(pattern) and (first or pattern[i:i + 1] != b"]"):
        i += 2 if pattern[i:i + 1] == b"\\" and i + 1 < len(pattern) else 1
        first = False
    return i + 1 if i < len(pattern) else -1


def _class_bytes(body: bytes) -> frozenset[int]:
    """The bytes the bracket expression [body] matches ('/' never)."""
    negate = body.startswith(b"!")
    if negate:
        body = body[1:]
    members: set[int] = set()
    i = 0
    while i < len(body):
        if body[i] == ord("\\") and i + 1 < len(body):
            i += 1
        low = high = body[i]
        i += 1
        if i + 1 < len(body) and body[i] == ord("-"):
            i += 1
            if body[i] == ord("\\") and i + 1 < len(body):
                i += 1
            high = body[i]
            i += 1
        members.update(range(low, high + 1))
    return (_ALL_BUT_SLASH - members) if negate else frozenset(members) & _ALL_BUT_SLASH


@lru_cache(maxsize=64)
def glob_elements(pattern: str) -> tuple[_Element, ...]:
    """The pattern, as bytes like the shim sees it, split into its elements."""
    raw = os.fsencode(pattern)
    elements: list[_Element] = []
    i = 0
    while i < len(raw):
        if raw.startswith(b"**/", i):
            elements.append(_Element(DSTAR_SLASH))
            i += 3
        elif raw.startswith(b"**", i):
            elements.append(_Element(DSTAR))
            i += 2
        elif raw.startswith(b"*", i):
            elements.append(_Element(STAR))
            i += 1
        elif raw.startswith(b"?", i):
            elements.append(_Element(ANY, _ALL_BUT_SLASH))
            i += 1
        elif raw.startswith(b"[", i) and (end := _class_end(raw, i)) > 0:
            elements.append(_Element(CLASS, _class_bytes(raw[i + 1:end - 1])))
            i = end
        else:
            if raw.startswith(b"\\", i) and i + 1 < len(raw):
                i += 1
            elements.append(_Element(LITERAL, frozenset((raw[i],))))
            i += 1
    return tuple(elements)


def glob_matches(pattern: str, path: str) -> bool:
    """The shim's glob_match: a set of live pattern positions advanced together over the
    path's bytes, so the cost is at most pattern x path (no backtracking)."""
    if "/" not in pattern:
        path = path.rsplit("/", 1)[-1]
    elements = glob_elements(pattern)
    count = len(elements)
    # closure[k]: position k and those after it that stars matching nothing reach
    closure = [0] * (count + 1)
    closure[count] = 1 << count
    for k in range(count - 1, -1, -1):
        closure[k] = 1 << k | (closure[k + 1] if elements[k].kind in SKIPPABLE else 0)
    live = closure[0]
    for byte in os.fsencode(path):
        following = 0
        for k, element in enumerate(elements):
            if not live >> k & 1:
                continue
            if element.kind == DSTAR or (element.kind == STAR and byte != ord("/")):
                following |= closure[k]
            elif element.kind == DSTAR_SLASH:
                following |= 1 << k  # inside the directories: no skipping ahead
                if byte == ord("/"):
                    following |= closure[k + 1]
            elif byte in element.accepts:
                following |= closure[k + 1]
        live = following
        if not live:
            return False
    return bool(live >> count & 1)


def mismatch(rule: Rule, query: Query) -> str | None:
    """Why rule does not match query, or None when it does."""
    is_unix = query.unix_path is not None or query.abstract is not None
    if rule.from_unix is not None or rule.from_abstract is not None:
        if not is_unix:
            return "it matches Unix sockets only (from-unix/from-abstract)"
    elif is_unix:
        return "it matches IP sockets only"
    if rule.direction and rule.direction != query.direction:
        return f"it is for '{rule.direction}' only"
    if rule.action in ("systemd", "receive") and query.direction != "in":
        return f"'{rule.action}' applies to listening sockets only"
    if rule.socket_type and rule.socket_type != query.socket_type:
        return f"it is for {'tcp' if rule.socket_type == 'stream' else 'udp'} only"
    if is_unix:
        if rule.from_unix is not None:
            if query.unix_path is None:
                return "from-unix does not match abstract names"
            if not glob_matches(rule.from_unix, query.unix_path):
                return f"{query.unix_path} does not match {rule.from_unix}"
        elif rule.from_abstract is not None:
            if query.abstract is None:
                return "from-abstract does not match paths"
            if not glob_matches(rule.from_abstract, query.abstract):
                return f"@{query.abstract} does not match {rule.from_abstract}"
        return None
    assert query.address is not None
    if rule.family is not None and rule.family != f"ipv{query.address.version}":
        return f"it is for {rule.family} sockets only"
    if rule.address is not None:
        address = query.address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if address.version != rule.address.version or address not in rule.address:
            return f"address {query.address} is not in {rule.address}"
    if rule.ports is not None and not rule.ports[0] <= query.port <= rule.ports[1]:
        low, high = rule.ports
        return f"port {query.port} is not {low if low == high else f'{low}-{high}'}"
    return None


def expand(template: str, query: Query) -> str:
    """Placeholders as the shim fills them (%p %a %t %%)."""
    kind = "tcp" if query.socket_type == "stream" else "udp"
    values = {"p": str(query.port) if query.address is not None else "unknown",
              "a": str(query.address) if query.address is not None else "unknown",
              "t": kind, "%": "%"}
    return re.sub(r"%(.)", lambda m: values.get(m.group(1), m.group(0)), template)


def outcome(rule: Rule | None, query: Query) -> str:
    call = "bind()" if query.direction == "in" else (
        "connect()" if query.socket_type == "stream" else "connect()/sendto()")
    is_unix = query.unix_path is not None or query.abstract is not None
    if rule is None or rule.action == "ignore":
        why = "no rule matches" if rule is None else "the rule says ignore"
        kind = "Unix" if is_unix else "IP"
        return f"{why}: {call} goes ahead unchanged on the {kind} socket"
    if rule.action in ("path", "abstract"):
        assert rule.target is not None
        target = expand(rule.target, query)
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
        return receive_outcome(rule, query, call)
    name = f" named {rule.systemd_name!r}" if rule.systemd_name else ""
    return f"{call} takes the {query.socket_type} socket{name} passed by systemd (LISTEN_FDS)"


def receive_outcome(rule: Rule, query: Query, call: str) -> str:
    """What a receive= rule does with a bind: connections arrive from a dispatcher."""
    assert rule.target is not None
    if query.socket_type != "stream":
        return f"{call} fails with EPROTOTYPE (receive= takes TCP connections only)"
    target = expand(rule.target, query)
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
    chosen = None
    for number, rule in enumerate(rules, 1):
        why = mismatch(rule, query)
        lines.append(f"  rule {number} {rule.text!r}: "
                     + ("matches" if why is None else f"no, {why}"))
        if why is None:
            chosen = rule
            break
    lines.append("=> " + (refusal or outcome(chosen, query)))
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
