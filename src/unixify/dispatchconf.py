"""The dispatcher's configuration file: listeners, the control socket, and routes.

One entry per line in the rule language's syntax (comma-separated options, ``\\,`` and
``\\\\`` escapes, ``#`` comment lines), parsed with the rule parser's own pieces
(rules.py: splitting, addresses and CIDR, ports, modes, owners, placeholders), so
addresses compare as addresses here exactly as in rules.

A line that starts with ``listen``, ``control``, ``allow`` or ``drop`` declares; every
other line is a route.  Routes are tried in order and the first match wins; a connection
no route matches is closed.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
from typing import Callable, NamedTuple, TypeVar, Union

from unixify.encoding import _field
from unixify.rules import (
    MAX_PATH,
    IPNetwork,
    RuleError,
    _absolute,
    _check_characters,
    _check_template,
    _need_value,
    _no_value,
    _parse_port,
    _parse_ports,
    _split,
    _Token,
    _u32,
    parse_address,
    parse_group,
    parse_mode,
    parse_owner,
)

T = TypeVar("T")
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
DECLARATIONS = ("listen", "control", "allow", "drop")
DEFAULT_QUEUE = 1024
MAX_QUEUE = 1 << 20
DEFAULT_BACKLOG = 4096
DEFAULT_MAX_REGISTRATIONS = 5  # per uid, as socketbox's protocol B server
MAX_ROUTES = 1_000_000


class Listener(NamedTuple):
    address: IPAddress | None = None   # None: passed by systemd
    port: int = 0
    transparent: bool = False
    freebind: bool = False
    reuseport: bool = False
    backlog: int = DEFAULT_BACKLOG
    netns: str | None = None
    systemd: bool = False
    systemd_name: str | None = None    # listen,systemd=NAME; None takes every passed one
    line: int = 0
    text: str = ""

    def key(self) -> tuple[object, ...]:
        """What makes two listeners the same socket (kept across a reload)."""
        return (self.address, self.port, self.netns, self.systemd, self.systemd_name,
                self.transparent, self.freebind, self.reuseport)

    def describe(self) -> str:
        if self.systemd:
            return "systemd" + (f" fd named {self.systemd_name}" if self.systemd_name else
                                " (every passed socket)")
        assert self.address is not None
        host = address_text(self.address)
        host = f"[{host}]" if self.address.version == 6 else host
        flags = [name for name in ("transparent", "freebind", "reuseport")
                 if getattr(self, name)]
        if self.backlog != DEFAULT_BACKLOG:
            flags.append(f"backlog {self.backlog}")
        if self.netns:
            flags.append(f"netns {self.netns}")
        return f"{host}:{self.port}" + (" (" + ", ".join(flags) + ")" if flags else "")


class Control(NamedTuple):
    path: str
    mode: int | None = None
    owner: int | None = None
    group: int | None = None
    line: int = 0


class Allow(NamedTuple):
    slot: int
    uid: int
    gid: int | None = None
    max: int = DEFAULT_MAX_REGISTRATIONS
    line: int = 0


class Drop(NamedTuple):
    uid: int
    gid: int | None = None  # None: the user's primary group
    line: int = 0


class Route(NamedTuple):
    action: str                        # "send" | "slot" | "reject"
    address: IPNetwork | None = None   # local address (the one the client dialled)
    ports: tuple[int, int] | None = None
    from_address: IPNetwork | None = None
    from_ports: tuple[int, int] | None = None
    target: str | None = None          # send=: the receiver path, unexpanded
    owner: int | None = None           # send=: the receiver's socket file must be theirs
    slot: int | None = None
    queue: int = DEFAULT_QUEUE
    line: int = 0
    text: str = ""

    def match_text(self) -> str:
        parts = []
        if self.address is not None:
            parts.append(f"addr={self.address}")
        if self.ports is not None:
            parts.append(f"port={_ports_text(self.ports)}")
        if self.from_address is not None:
            parts.append(f"from={self.from_address}")
        if self.from_ports is not None:
            parts.append(f"from-port={_ports_text(self.from_ports)}")
        return " ".join(parts) or "any"

    def describe(self) -> str:
        if self.action == "send":
            what = f"send {self.target}"
            if self.owner is not None:
                what += f" (owner {self.owner})"
        elif self.action == "slot":
            what = f"slot {self.slot}"
        else:
            return "reject"
        return what + (f" queue {self.queue}" if self.queue != DEFAULT_QUEUE else "")


class Config(NamedTuple):
    listeners: list[Listener]
    routes: list[Route]
    control: Control | None = None
    allows: list[Allow] = []  # noqa: RUF012 - NamedTuple defaults are never mutated
    drop: Drop | None = None


class ConfigErrors(ValueError):
    """Every error of a file, one complete line each."""

    def __init__(self, errors: list[RuleError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(err) for err in errors))


def address_text(address: IPAddress) -> str:
    """As written: an IPv4-mapped address as ::ffff:a.b.c.d (not ::ffff:7f00:1)."""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return f"::ffff:{mapped}" if mapped is not None else str(address)


def _ports_text(ports: tuple[int, int]) -> str:
    return str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}"


def _number(value: str, what: str, low: int, high: int) -> int:
    if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
        raise ValueError(f"{what} {value!r} is not a number from {low} to {high}")
    return int(value)


def _host(value: str) -> IPAddress:
    """A listener's address: one address, kept as written (an IPv4-mapped IPv6 address
    stays IPv6: such a listener takes both families, as TPROXY needs)."""
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address (a listener takes one "
                         "address, no prefix)") from None


def _socket_path(value: str, cwd: str, what: str, template: bool) -> str:
    if template:
        _check_template(value, what)
    path = _absolute(value, cwd)
    if len(path.encode()) > MAX_PATH and "%" not in path:
        raise ValueError(f"{what} is {len(path.encode())} bytes; a Unix socket path holds "
                         f"at most {MAX_PATH}")
    return path


class _Line:
    """The options of one line, each taken at most once, in any order."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.options: dict[str, tuple[_Token, bool, str]] = {}
        self.order: list[str] = []
        tokens = _split(text)
        for token in tokens:
            key, equals, value = token.text.partition("=")
            key = key.strip()
            if not key:
                raise self.error("empty option (doubled or trailing comma?)" if not equals
                                 else "option without a name", token)
            key = {"address": "addr"}.get(key, key)
            if key in self.options:
                raise self.error(f"{key!r} given twice", token)
            self.options[key] = (token, bool(equals), value)
            self.order.append(key)

    def error(self, message: str, token: _Token | None = None) -> RuleError:
        return RuleError(message, self.text, token.column if token else 0)

    def column_of(self, key: str) -> _Token:
        return self.options[key][0]

    def flag(self, key: str) -> bool:
        if key not in self.options:
            return False
        _, has_value, _ = self.options[key]
        _no_value(key, has_value)
        return True

    def value(self, key: str) -> str | None:
        if key not in self.options:
            return None
        _, has_value, value = self.options[key]
        return _need_value(key, has_value, value)

    def only(self, allowed: tuple[str, ...], what: str) -> None:
        for key in self.order:
            if key not in allowed:
                raise self.error(f"unknown option {key!r} for {what} (it takes "
                                 + ", ".join(allowed[1:] or allowed) + ")",
                                 self.column_of(key))


def _take(line: _Line, key: str, parse: Callable[[str], T]) -> T:
    """parse(key's value), any error placed at key's column."""
    try:
        return parse(line.value(key) or "")
    except ValueError as err:
        raise line.error(str(err), line.column_of(key)) from None


def _flag(line: _Line, key: str) -> bool:
    try:
        return line.flag(key)
    except ValueError as err:
        raise line.error(str(err), line.column_of(key)) from None


def _parse_listen(line: _Line, number: int) -> Listener:
    if "systemd" in line.options:
        line.only(("listen", "systemd"), "'listen,systemd'")
        token, has_value, name = line.options["systemd"]
        if has_value and not name:
            raise line.error("'systemd=' needs a file descriptor name, or no '='", token)
        return Listener(systemd=True, systemd_name=name if has_value else None,
                        line=number, text=line.text)
    line.only(("listen", "addr", "port", "transparent", "freebind", "reuseport", "backlog",
               "netns"), "'listen'")
    for key in ("addr", "port"):
        if key not in line.options:
            raise line.error(f"'listen' needs {key}= (or 'systemd' for passed sockets)")
    address = _take(line, "addr", _host)
    port = _take(line, "port", _parse_port)
    if port == 0:
        raise line.error("port 0 would listen on a port the kernel picks; name one",
                         line.column_of("port"))
    backlog = DEFAULT_BACKLOG
    if "backlog" in line.options:
        backlog = _take(line, "backlog", lambda v: _number(v, "backlog", 1, 1 << 20))
    netns = None
    if "netns" in line.options:
        netns = _take(line, "netns", str)
        if not netns.startswith("/"):
            raise line.error(f"netns {netns!r} is not an absolute path (like "
                             "/run/netns/NAME)", line.column_of("netns"))
    return Listener(address=address, port=port, backlog=backlog, netns=netns,
                    transparent=_flag(line, "transparent"), freebind=_flag(line, "freebind"),
                    reuseport=_flag(line, "reuseport"), line=number, text=line.text)


def _optional(line: _Line, key: str, parse: Callable[[str], T]) -> T | None:
    return _take(line, key, parse) if key in line.options else None


def _parse_control(line: _Line, number: int, cwd: str) -> Control:
    line.only(("control", "path", "mode", "owner", "group"), "'control'")
    if "path" not in line.options:
        raise line.error("'control' needs path= (the registration socket)")
    path = _take(line, "path", lambda v: _socket_path(v, cwd, "control path", False))
    return Control(path=path, mode=_optional(line, "mode", parse_mode),
                   owner=_optional(line, "owner", parse_owner),
                   group=_optional(line, "group", parse_group), line=number)


def _parse_allow(line: _Line, number: int) -> Allow:
    line.only(("allow", "slot", "uid", "gid", "max"), "'allow'")
    for key in ("slot", "uid"):
        if key not in line.options:
            raise line.error(f"'allow' needs {key}=")
    most = _optional(line, "max", lambda v: _number(v, "max", 1, 1024))
    return Allow(slot=_take(line, "slot", lambda v: _u32(v, "slot")),
                 uid=_take(line, "uid", parse_owner), gid=_optional(line, "gid", parse_group),
                 max=DEFAULT_MAX_REGISTRATIONS if most is None else most, line=number)


def _parse_drop(line: _Line, number: int) -> Drop:
    line.only(("drop", "user", "group"), "'drop'")
    if "user" not in line.options:
        raise line.error("'drop' needs user= (whom to run as once the listeners exist)")
    uid = _take(line, "user", parse_owner)
    gid = _optional(line, "group", parse_group)
    if gid is None:
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            raise line.error(f"user {uid} has no passwd entry; give group=",
                             line.column_of("user")) from None
    return Drop(uid=uid, gid=gid, line=number)


ROUTE_MATCHES = ("addr", "port", "from", "from-port")
ROUTE_ACTIONS = ("send", "slot", "reject")


def _parse_route(line: _Line, number: int, cwd: str) -> Route:
    line.only(("", *ROUTE_MATCHES, *ROUTE_ACTIONS, "owner", "queue"), "a route")
    actions = [key for key in line.order if key in ROUTE_ACTIONS]
    if not actions:
        raise line.error("no action (send=PATH, slot=N or reject); a line that declares "
                         "starts with listen, control, allow or drop")
    if len(actions) > 1:
        raise line.error(f"conflicting actions {actions[0]!r} and {actions[1]!r}",
                         line.column_of(actions[1]))
    action = actions[0]
    route = Route(action=action, address=_optional(line, "addr", parse_address),
                  ports=_optional(line, "port", _parse_ports),
                  from_address=_optional(line, "from", parse_address),
                  from_ports=_optional(line, "from-port", _parse_ports),
                  line=number, text=line.text)
    if action == "reject":
        _flag(line, "reject")
        for key in ("owner", "queue"):
            if key in line.options:
                raise line.error(f"{key!r} applies to send= and slot= routes",
                                 line.column_of(key))
        return route
    if action == "send":
        route = route._replace(
            target=_take(line, "send", lambda v: _socket_path(v, cwd, "send path", True)),
            owner=_optional(line, "owner", parse_owner))
    else:
        route = route._replace(slot=_take(line, "slot", lambda v: _u32(v, "slot")))
        if "owner" in line.options:
            raise line.error("'owner' checks a send= receiver's socket file; a slot's "
                             "owner is its allow line", line.column_of("owner"))
    queue = _optional(line, "queue", lambda v: _number(v, "queue", 1, MAX_QUEUE))
    return route if queue is None else route._replace(queue=queue)


def _parse_line(text: str, number: int, cwd: str, config: dict[str, list[object]]) -> None:
    _check_characters(text)
    line = _Line(text)
    head = line.order[0]
    if head in DECLARATIONS:
        _, has_value, _ = line.options[head]
        if has_value:
            raise line.error(f"'{head}' takes no value; options follow it after a comma",
                             line.column_of(head))
    if head == "listen":
        config["listeners"].append(_parse_listen(line, number))
    elif head == "control":
        config["control"].append(_parse_control(line, number, cwd))
    elif head == "allow":
        config["allows"].append(_parse_allow(line, number))
    elif head == "drop":
        config["drop"].append(_parse_drop(line, number))
    else:
        config["routes"].append(_parse_route(line, number, cwd))


def _check_whole(config: Config, origin: str, texts: dict[int, str]) -> list[RuleError]:
    """What only the whole file can tell: doubles, and references to declarations."""
    errors: list[RuleError] = []

    def at(number: int, message: str) -> None:
        errors.append(RuleError(message, texts[number], 0, f"{origin}:{number}"))

    if not config.listeners:
        errors.append(RuleError("no listener (listen,addr=ADDRESS,port=PORT or "
                                "listen,systemd)", "", 0, origin))
    seen: dict[tuple[object, ...], int] = {}
    for listener in config.listeners:
        key = (listener.address, listener.port, listener.netns, listener.systemd,
               listener.systemd_name)
        if key in seen:
            at(listener.line, f"the same listener as line {seen[key]}")
        seen.setdefault(key, listener.line)
    allowed: dict[tuple[int, int], int] = {}
    for allow in config.allows:
        if (allow.slot, allow.uid) in allowed:
            at(allow.line, f"slot {allow.slot} is allowed to uid {allow.uid} on line "
               f"{allowed[allow.slot, allow.uid]} already")
        allowed.setdefault((allow.slot, allow.uid), allow.line)
    slots = {allow.slot for allow in config.allows}
    for route in config.routes:
        if route.action != "slot":
            continue
        if config.control is None:
            at(route.line, "slot= needs a control socket (control,path=PATH)")
        elif route.slot not in slots:
            at(route.line, f"no allow line lets anyone register slot {route.slot} "
               f"(allow,slot={route.slot},uid=UID)")
    if config.allows and config.control is None:
        at(config.allows[0].line, "allow needs a control socket (control,path=PATH)")
    return errors


def parse_config(content: str, origin: str, cwd: str | None = None) -> Config:
    """The configuration in content (origin names it in messages), or ConfigErrors with
    one line for every bad line."""
    if cwd is None:
        cwd = os.getcwd()
    parts: dict[str, list[object]] = {"listeners": [], "routes": [], "control": [],
                                      "allows": [], "drop": []}
    errors: list[RuleError] = []
    texts: dict[int, str] = {}
    for number, raw in enumerate(content.splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        texts[number] = text
        try:
            _parse_line(text, number, cwd, parts)
        except RuleError as err:
            errors.append(err.located(f"{origin}:{number}"))
    for key in ("control", "drop"):
        for extra in parts[key][1:]:
            number = extra.line  # type: ignore[attr-defined]
            errors.append(RuleError(f"a second '{key}' line (line "
                                    f"{parts[key][0].line} has one)",  # type: ignore[attr-defined]
                                    texts[number], 0, f"{origin}:{number}"))
    config = Config(listeners=parts["listeners"], routes=parts["routes"],  # type: ignore[arg-type]
                    control=parts["control"][0] if parts["control"] else None,  # type: ignore[arg-type]
                    allows=parts["allows"],  # type: ignore[arg-type]
                    drop=parts["drop"][0] if parts["drop"] else None)  # type: ignore[arg-type]
    if len(config.routes) > MAX_ROUTES:
        errors.append(RuleError(f"more routes than the limit of {MAX_ROUTES}", "", 0,
                                origin))
    if not errors:
        errors = _check_whole(config, origin, texts)
    if errors:
        errors.sort(key=lambda err: _line_of(err.origin))
        raise ConfigErrors(errors)
    return config


def _line_of(origin: str) -> int:
    tail = origin.rpartition(":")[2]
    return int(tail) if tail.isdigit() else 0


def _in(address: IPAddress, network: IPNetwork) -> bool:
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address) in network


def find_route(routes: list[Route], local: IPAddress, port: int, remote: IPAddress,
               remote_port: int) -> Route | None:
    """The route for a connection (first match), or None: it is closed.  IPv4-mapped
    addresses compare as IPv4, as in the rules."""
    for route in routes:
        if route.address is not None and not _in(local, route.address):
            continue
        if route.ports is not None and not route.ports[0] <= port <= route.ports[1]:
            continue
        if route.from_address is not None and not _in(remote, route.from_address):
            continue
        if route.from_ports is not None and \
                not route.from_ports[0] <= remote_port <= route.from_ports[1]:
            continue
        return route
    return None


ROUTE_LETTERS = {"send": "S", "slot": "B", "reject": "R"}


def _prefix_field(network: IPNetwork) -> str:
    return f"{network.network_address.packed.hex()}/{network.prefixlen}"


def encode_routes(routes: list[Route]) -> bytes:
    """The routes as the dispatcher's loop reads them (src/dispatcher/table.c): the rule
    encoding's syntax (encoding.py) under its own magic, ``UFD1``.  Keys: ``A`` action
    (``S`` send, ``B`` slot, ``R`` reject), ``a``/``f`` local/remote prefix, ``p``/``q``
    local/remote ports, ``T`` receiver path, ``o`` its owner, ``s`` slot, ``Q`` queue."""
    out = ["UFD1"]
    for route in routes:
        fields = [_field("A", ROUTE_LETTERS[route.action])]
        if route.address is not None:
            fields.append(_field("a", _prefix_field(route.address)))
        if route.ports is not None:
            fields.append(_field("p", f"{route.ports[0]}-{route.ports[1]}"))
        if route.from_address is not None:
            fields.append(_field("f", _prefix_field(route.from_address)))
        if route.from_ports is not None:
            fields.append(_field("q", f"{route.from_ports[0]}-{route.from_ports[1]}"))
        if route.target is not None:
            fields.append(_field("T", route.target))
        if route.owner is not None:
            fields.append(_field("o", str(route.owner)))
        if route.slot is not None:
            fields.append(_field("s", str(route.slot)))
        if route.action != "reject":
            fields.append(_field("Q", str(route.queue)))
        out.append("{" + "".join(fields) + "}")
    return os.fsencode("".join(out))


def format_config(config: Config) -> str:
    """The table --check prints."""
    out = []
    for listener in config.listeners:
        out.append(f"listen  {listener.describe()}")
    if config.control:
        control = config.control
        perms = [f"mode {control.mode:04o}" if control.mode is not None else "",
                 f"owner {control.owner}" if control.owner is not None else "",
                 f"group {control.group}" if control.group is not None else ""]
        extra = ", ".join(p for p in perms if p)
        out.append(f"control {control.path}" + (f" ({extra})" if extra else ""))
    for allow in config.allows:
        out.append(f"allow   slot {allow.slot} to uid {allow.uid}"
                   + (f" gid {allow.gid}" if allow.gid is not None else "")
                   + f", at most {allow.max} registrations")
    if config.drop:
        out.append(f"drop    to uid {config.drop.uid} gid {config.drop.gid}")
    rows = [("#", "line", "match", "action")]
    for number, route in enumerate(config.routes, 1):
        rows.append((str(number), str(route.line), route.match_text(), route.describe()))
    rows.append(("-", "-", "any other", "close"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    out.extend("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3]))
               + "  " + row[3] for row in rows)
    return "\n".join(line.rstrip() for line in out) + "\n"
