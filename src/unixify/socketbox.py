"""``unixify dispatch --from-socketbox FILE``: a socketbox daemon configuration as routes.

socketbox looks a connection up in rule-set 0, following jumps into other rule sets
(scanned in order, first match wins) and maps (exact lookups under a mask), each with a
default action.  Our routes are one ordered list, so the jumps are inlined: an entry's
conditions are joined with those of the path that leads to it, and every set's default
becomes a route that catches the rest of that path (so nothing falls through to a route
socketbox would never have reached).  What has no equivalent (``jump-fd``, a mask that
is not a prefix, a loop of jumps) becomes a ``#`` comment naming it, followed by a
``reject`` for the connections it would have taken, and a line on stderr.

The grammar is socketbox's own (shared/reference.md): whole-line ``#`` comments, tokens
``keyword[:value]`` split at blanks, keywords abbreviated to any unique prefix.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from unixify.dispatchconf import MAX_ROUTES
from unixify.rules import MAX_PATH, escape_value, parse_address

KEYWORDS = ("max-maps", "max-rules", "rule-set", "map-set", "size", "ip", "rip", "port",
            "rport", "jump-unix", "jump-fd", "jump-rule", "jump-map", "fail", "match-lip",
            "match-rip", "match-lport", "match-rport", "default")
MATCHES = ("ip", "rip", "port", "rport")
ACTIONS = ("jump-unix", "jump-fd", "jump-rule", "jump-map", "fail")
MAX_STEPS = 100  # socketbox follows at most this many jumps, then closes
ALL = (1 << 128) - 1
MAPPED = (0xFFFF << 32, ALL ^ ((1 << 32) - 1))  # ::ffff:0:0/96 as (address, mask)


class SocketboxError(ValueError):
    """A line socketbox itself would refuse; str() is one complete line."""


class Action(NamedTuple):
    kind: str          # one of ACTIONS
    value: str = ""


class Match(NamedTuple):
    """A masked comparison on the connection tuple; 0 masks match anything."""

    lip: tuple[int, int] = (0, 0)
    rip: tuple[int, int] = (0, 0)
    lport: int | None = None
    rport: int | None = None

    def join(self, other: Match) -> Match | None:
        """Both at once, or None when no connection matches both."""
        lip, rip = _join_masks(self.lip, other.lip), _join_masks(self.rip, other.rip)
        lport, rport = _join_port(self.lport, other.lport), _join_port(self.rport, other.rport)
        if lip is None or rip is None or lport == -1 or rport == -1:
            return None
        return Match(lip, rip, lport, rport)


class Entry(NamedTuple):
    match: Match
    action: Action
    line: int


class Set(NamedTuple):
    kind: str          # "rule-set" | "map-set"
    number: int
    entries: list[Entry]
    default: list[Action]          # one item; a list so the parser can replace it
    masks: dict[str, int]          # map-set: match-lip/match-rip prefix, match-*port 1


def _join_masks(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int] | None:
    common = a[1] & b[1]
    if a[0] & common != b[0] & common:
        return None
    return (a[0] & a[1]) | (b[0] & b[1]), a[1] | b[1]


def _join_port(a: int | None, b: int | None) -> int | None:
    if a is None or b is None or a == b:
        return b if a is None else a
    return -1


def _prefix_mask(length: int) -> int:
    return ALL ^ ((1 << (128 - length)) - 1)


def _parse_address(value: str, in_map: bool) -> tuple[int, int]:
    text, slash, mask_text = value.partition("/")
    try:
        address = int(ipaddress.IPv6Address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv6 address (socketbox writes IPv4 as "
                         "::ffff:a.b.c.d)") from None
    if not slash:
        return address, ALL
    if in_map:
        raise ValueError("a map entry takes an exact address (the map-set's match-lip "
                         "gives the prefix)")
    if mask_text.isascii() and mask_text.isdigit():
        if int(mask_text) > 128:
            raise ValueError(f"prefix length {mask_text} is out of range (0-128)")
        return address, _prefix_mask(int(mask_text))
    try:
        return address, int(ipaddress.IPv6Address(mask_text))
    except ValueError:
        raise ValueError(f"mask {mask_text!r} is neither a prefix length nor an IPv6 "
                         "mask") from None


def _number(value: str, low: int, high: int, what: str) -> int:
    if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
        raise ValueError(f"{what} {value!r} is not a number from {low} to {high}")
    return int(value)


def _keyword(token: str) -> tuple[str, str]:
    name, _, value = token.partition(":")
    if name in KEYWORDS:
        return name, value
    found = [k for k in KEYWORDS if name and k.startswith(name)]
    if len(found) != 1:
        why = f"ambiguous (it could be {', '.join(found)})" if found else "unknown"
        raise ValueError(f"keyword {name!r} is {why}")
    return found[0], value


class _Parser:
    def __init__(self) -> None:
        self.sets: dict[tuple[str, int], Set] = {}
        self.current: Set | None = None
        self.in_default = False
        self.notes: list[tuple[int, str]] = []

    def line(self, number: int, text: str) -> None:
        tokens = [_keyword(token) for token in text.split()]
        head = tokens[0][0]
        if head in ("rule-set", "map-set"):
            self.select(head, tokens[0][1])
            self.header(number, tokens[1:])
        elif head in ("max-maps", "max-rules"):
            self.header(number, tokens)
        elif head == "default":
            self.default(number, tokens)
        elif self.in_default:
            if any(name not in ACTIONS for name, _ in tokens):
                raise ValueError("a match after 'default' (socketbox allows only actions "
                                 "until the next rule-set:/map-set:)")
            self.default(number, [("default", ""), *tokens])
        else:
            self.entry(number, tokens)

    def select(self, kind: str, value: str) -> None:
        number = _number(value, 0, 999, kind)
        key = (kind, number)
        if key not in self.sets:
            self.sets[key] = Set(kind, number, [], [Action("fail")], {})
        self.current = self.sets[key]
        self.in_default = False

    def header(self, number: int, tokens: list[tuple[str, str]]) -> None:
        for name, value in tokens:
            if name in ("max-maps", "max-rules", "size"):
                _number(value, 1, 1000, name)
            elif name.startswith("match-") and self.current and self.current.kind == "map-set":
                if name in ("match-lip", "match-rip"):
                    self.current.masks[name] = _number(value, 0, 128, name)
                else:
                    self.current.masks[name] = 1
            elif name == "default":
                self.default(number, [(name, value)])
            else:
                raise ValueError(f"{name!r} does not belong on this line")

    def default(self, number: int, tokens: list[tuple[str, str]]) -> None:
        if self.current is None:
            raise ValueError("'default' before any rule-set:/map-set:")
        self.in_default = True
        if tokens[0][1] not in ("", "fail"):
            self.notes.append((number, f"socketbox ignores the argument of "
                               f"'default:{tokens[0][1]}'; the default stays fail"))
        for name, value in tokens[1:]:
            if name not in ACTIONS:
                raise ValueError(f"{name!r} after 'default' (only actions may follow)")
            self.current.default[0] = _action(name, value)

    def entry(self, number: int, tokens: list[tuple[str, str]]) -> None:
        if self.current is None:
            raise ValueError("an entry before any rule-set:/map-set:")
        in_map = self.current.kind == "map-set"
        fields: dict[str, object] = {}
        action = Action("fail")
        for name, value in tokens:  # a later token overrides an earlier one, as there
            if name in ("ip", "rip"):
                fields[name] = _parse_address(value, in_map)
            elif name in ("port", "rport"):
                fields[name] = _number(value, 0, 65535, name)
            elif name in ACTIONS:
                action = _action(name, value)
            else:
                raise ValueError(f"{name!r} does not belong in an entry")
        self.current.entries.append(Entry(Match(
            lip=fields.get("ip", (0, 0)), rip=fields.get("rip", (0, 0)),  # type: ignore[arg-type]
            lport=fields.get("port"), rport=fields.get("rport")),  # type: ignore[arg-type]
            action, number))


def _action(name: str, value: str) -> Action:
    if name in ("jump-rule", "jump-map"):
        _number(value, 0, 999, name)
    elif name == "jump-fd":
        _number(value, 0, 2**31 - 1, name)
    elif name == "jump-unix" and not value:
        raise ValueError("jump-unix needs a path")
    return Action(name, value)


def parse(content: str, origin: str) -> tuple[dict[tuple[str, int], Set], list[str]]:
    """The sets of a socketbox file, and notes (complete lines) about what it does that
    its author may not expect."""
    parser = _Parser()
    for number, text in enumerate(content.splitlines(), 1):
        if not text.strip() or text.startswith("#"):
            continue
        if "#" in text:
            raise SocketboxError(f"{origin}:{number}: '#' starts a comment only as the "
                                 f"first character of a line (socketbox refuses "
                                 f"{text.strip()!r})")
        try:
            parser.line(number, text)
        except ValueError as err:
            raise SocketboxError(f"{origin}:{number}: {err} in {text.strip()!r}") from None
    return parser.sets, [f"{origin}:{n}: {note}" for n, note in parser.notes]


def _networks(address: int, mask: int) -> list[str] | None:
    """Our addr= values for a masked address (one each: v6, and v4 when the v6 prefix
    takes in IPv4-mapped addresses); [] for any; None when the mask is no prefix."""
    if mask == 0:
        return []
    length = bin(mask).count("1")
    if mask != _prefix_mask(length):
        return None
    network = ipaddress.IPv6Network((address & mask, length))
    if length >= 96 or _join_masks((address, mask), MAPPED) is None:
        ours = parse_address(str(network))
        return [str(ours.network_address if ours.prefixlen == ours.max_prefixlen else ours)]
    return [str(network), "0.0.0.0/0"]


class _Writer:
    def __init__(self, sets: dict[tuple[str, int], Set], origin: str) -> None:
        self.sets = sets
        self.origin = origin
        self.out: list[str] = []
        self.notes: list[str] = []
        self.routes = 0

    def unsupported(self, line: int, why: str, match: Match) -> None:
        where = f"{self.origin}:{line}" if line else self.origin
        self.notes.append(f"{where}: {why}; its connections are rejected")
        self.out.append(f"# {where}: {why}")
        self.route(match, "reject", line)

    def route(self, match: Match, action: str, line: int) -> None:
        lips, rips = _networks(*match.lip), _networks(*match.rip)
        if lips is None or rips is None:
            self.unsupported(line, "an address mask that is not a prefix", Match())
            return
        ports = [f"port={match.lport}"] if match.lport is not None else []
        ports += [f"from-port={match.rport}"] if match.rport is not None else []
        for lip in lips or [""]:
            for rip in rips or [""]:
                parts = ([f"addr={lip}"] if lip else []) + ([f"from={rip}"] if rip else [])
                self.routes += 1
                if self.routes > MAX_ROUTES:
                    raise SocketboxError(f"{self.origin}: the jumps inline to more than "
                                         f"{MAX_ROUTES} routes")
                self.out.append(",".join([*parts, *ports, action]))

    def act(self, action: Action, match: Match, line: int, path: list[tuple[str, int]]) -> None:
        if action.kind == "fail":
            self.route(match, "reject", line)
        elif action.kind == "jump-unix":
            target = action.value
            if len(target.encode()) > MAX_PATH:
                self.unsupported(line, f"jump-unix path of {len(target.encode())} bytes "
                                 f"(socketbox cuts it to {MAX_PATH}; we refuse)", match)
                return
            if not target.startswith("/"):
                self.notes.append(f"{self.origin}:{line}: relative path {target!r} is "
                                  "taken from the dispatcher's working directory")
            self.route(match, "send=" + escape_value(target.replace("%", "%%")), line)
        elif action.kind == "jump-fd":
            self.unsupported(line, f"jump-fd:{action.value} sends to an inherited fd; "
                             "name the receiver with send=PATH instead", match)
        else:
            kind = "rule-set" if action.kind == "jump-rule" else "map-set"
            self.walk((kind, int(action.value)), match, line, path)

    def walk(self, key: tuple[str, int], match: Match, line: int,
             path: list[tuple[str, int]]) -> None:
        if key not in self.sets:
            self.unsupported(line, f"a jump to {key[0]}:{key[1]}, which is not defined "
                             "(socketbox closes such connections)", match)
            return
        if key in path or len(path) >= MAX_STEPS:
            self.unsupported(line, f"a loop of jumps through {key[0]}:{key[1]} (socketbox "
                             f"closes after {MAX_STEPS} steps)", match)
            return
        chosen = self.sets[key]
        seen: dict[Match, int] = {}
        for entry in chosen.entries:
            own = entry.match if chosen.kind == "rule-set" else _masked(entry.match,
                                                                        chosen.masks)
            if own in seen and chosen.kind == "map-set":
                self.notes.append(f"{self.origin}:{entry.line}: the same key as line "
                                  f"{seen[own]} in map-set:{key[1]} (socketbox finds "
                                  "either; the first is kept)")
                continue
            seen.setdefault(own, entry.line)
            joined = match.join(own)
            if joined is not None:
                self.act(entry.action, joined, entry.line, [*path, key])
        self.act(chosen.default[0], match, line, [*path, key])


def _masked(match: Match, masks: dict[str, int]) -> Match:
    def cut(address: tuple[int, int], key: str) -> tuple[int, int]:
        mask = _prefix_mask(masks[key]) if key in masks else 0
        return address[0] & mask, mask

    return Match(cut(match.lip, "match-lip"), cut(match.rip, "match-rip"),
                 (match.lport or 0) if "match-lport" in masks else None,
                 (match.rport or 0) if "match-rport" in masks else None)


def convert(content: str, origin: str) -> tuple[str, list[str]]:
    """Our configuration for a socketbox file, and the lines for stderr."""
    sets, notes = parse(content, origin)
    writer = _Writer(sets, origin)
    writer.out += [f"# converted from the socketbox configuration {origin}",
                   "# socketbox takes its listener on its command line: add it here, e.g.",
                   "#   listen,addr=::ffff:127.100.100.1,port=1,transparent"]
    writer.walk(("rule-set", 0), Match(), 0, [])
    return "\n".join(writer.out) + "\n", notes + writer.notes
