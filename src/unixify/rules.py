"""The rule language: one parser of record for the launcher, rule files and the shim.

A rule is a comma-separated list of flags and ``key=value`` options: zero or more
*matches* (which socket calls the rule applies to) and exactly one *action* (what happens
to a matching socket).  Inside a value only ``\\,`` and ``\\\\`` are escapes; after the
first ``=`` the rest of the token is the value.  Rules are tried in order and the first
match wins, as in ip2unix.

Beyond ip2unix, addresses are compared as addresses (``::1`` equals
``0:0:0:0:0:0:0:1``; ``::ffff:1.2.3.4`` equals ``1.2.3.4``) and may carry a CIDR prefix.
"""

from __future__ import annotations

import errno as errno_module
import grp
import ipaddress
import os
import pwd
from collections.abc import Callable
from typing import NamedTuple, Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# Actions and the matches that only make sense with some of them.
ACTIONS = ("path", "abstract", "reject", "blackhole", "ignore", "systemd", "vsock", "tipc",
           "fc", "receive")
# Actions that make a socket file at a bind, taking mode=, owner=, group=, noremove.
FILE_ACTIONS = ("path", "receive")
VMADDR_CID_ANY = 0xFFFFFFFF
TYPE_ALIASES = {"tcp": "stream", "stream": "stream",
                "udp": "dgram", "dgram": "dgram", "datagram": "dgram"}
MAX_PATH = 107  # sizeof(sun_path) - 1: room for the terminating NUL
GLOB_MAX = 1024  # longest from-unix/from-abstract pattern, in bytes (shim.h: GLOB_MAX)
PLACEHOLDERS = "pat%"


class RuleError(ValueError):
    """A rule could not be parsed.  ``str(err)`` is a complete one-line message."""

    def __init__(self, message: str, rule: str = "", column: int = 0,
                 origin: str = "") -> None:
        self.message = message
        self.rule = rule
        self.column = column  # 1-based; 0 when the error is about the whole rule
        self.origin = origin
        super().__init__(self.format())

    def format(self) -> str:
        where = self.origin or "rule"
        if self.column:
            where += f", column {self.column}"
        return f"{where}: {self.message} in {self.rule!r}"

    def located(self, origin: str) -> RuleError:
        return RuleError(self.message, self.rule, self.column, origin)


class Rule(NamedTuple):
    """One parsed rule.  ``None`` for a match means "any"."""

    action: str
    direction: str | None = None     # "in" | "out"
    socket_type: str | None = None   # "stream" | "dgram"
    address: IPNetwork | None = None
    ports: tuple[int, int] | None = None
    from_unix: str | None = None
    from_abstract: str | None = None
    target: str | None = None        # path= (absolute) or abstract= name, unexpanded;
                                     # fc= proxy path (absolute)
    numbers: tuple[int, ...] = ()    # vsock= (cid, port), tipc= (5 values), fc= (port,),
                                     # receive= with slot= (slot,)
    reject_errno: int | None = None
    systemd_name: str | None = None
    noremove: bool = False
    family: str | None = None        # "ipv4" | "ipv6": the socket's address family
    mode: int | None = None          # socket file permissions (path= only)
    owner: int | None = None         # socket file owner, a uid
    group: int | None = None         # socket file group, a gid
    owner_name: str | None = None    # their names, for the shim's messages
    group_name: str | None = None
    text: str = ""

    def describe(self) -> str:
        """A short human-readable form of what the rule does."""
        if self.action == "path":
            what = f"path {self.target}" + file_notes(self)
        elif self.action == "abstract":
            what = f"abstract @{self.target}"
        elif self.action == "reject":
            assert self.reject_errno is not None
            what = f"reject with {errno_name(self.reject_errno)}"
        elif self.action == "systemd":
            what = "systemd fd" + (f" named {self.systemd_name}" if self.systemd_name else "")
        elif self.action == "vsock":
            cid, port = self.numbers
            what = f"vsock cid {'any' if cid == VMADDR_CID_ANY else cid} port {port}"
        elif self.action == "tipc":
            what = "tipc " + ":".join(str(n) for n in self.numbers)
        elif self.action == "fc":
            what = f"firecracker {self.target} port {self.numbers[0]}"
        elif self.action == "receive" and self.numbers:
            what = f"receiver of slot {self.numbers[0]} at control socket {self.target}"
        elif self.action == "receive":
            what = f"receiver at {self.target}" + file_notes(self)
        else:
            what = self.action
        return what


def file_notes(rule: Rule) -> str:
    """A socket file's noremove and permissions, as describe() shows them."""
    text = " (noremove)" if rule.noremove else ""
    perms = [f"mode {rule.mode:04o}" if rule.mode is not None else "",
             f"owner {rule.owner}" if rule.owner is not None else "",
             f"group {rule.group}" if rule.group is not None else ""]
    if any(perms):
        text += " (" + ", ".join(p for p in perms if p) + ")"
    return text


class _Token(NamedTuple):
    text: str      # unescaped text
    column: int    # 1-based column of its first character in the rule


def errno_name(number: int) -> str:
    return errno_module.errorcode.get(number, str(number))


def _split(text: str) -> list[_Token]:
    """Split at unescaped commas.  Only ``\\,`` and ``\\\\`` are escapes."""
    tokens: list[_Token] = []
    current: list[str] = []
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in ",\\":
            current.append(text[i + 1])
            i += 2
            continue
        if ch == ",":
            tokens.append(_Token("".join(current), start + 1))
            current = []
            start = i + 1
        else:
            current.append(ch)
        i += 1
    tokens.append(_Token("".join(current), start + 1))
    return tokens


def _parse_port(value: str) -> int:
    if not value.isdigit() or not value.isascii():
        raise ValueError(f"port {value!r} is not a number")
    port = int(value)
    if port > 65535:
        raise ValueError(f"port {value} is out of range (0-65535)")
    return port


def _parse_ports(value: str) -> tuple[int, int]:
    low_text, dash, high_text = value.partition("-")
    if dash and not (low_text and high_text):
        raise ValueError(f"port range {value!r} needs both ends (LOW-HIGH)")
    low = _parse_port(low_text)
    high = _parse_port(high_text) if dash else low
    if high < low:
        raise ValueError(f"port range {value!r} is reversed")
    return low, high


def parse_address(value: str) -> IPNetwork:
    """An IPv4 or IPv6 address or CIDR network.  IPv4-mapped IPv6 becomes IPv4."""
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            raise ValueError(f"address {value!r} has bits set beyond its prefix") from None
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None and network.prefixlen >= 96:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def parse_errno(value: str) -> int:
    """An errno name (any case, aliases included) or a number in the kernel's range."""
    if value.isdigit() and value.isascii():
        number = int(value)
        if not 1 <= number <= 4095:
            raise ValueError(f"errno {value} is out of range (1-4095)")
        return number
    found: object = getattr(errno_module, value.upper(), None)
    if not isinstance(found, int) or not value.upper().startswith("E"):
        raise ValueError(f"unknown errno name {value!r}")
    return found


def _u32(value: str, what: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) > 0xFFFFFFFF:
        raise ValueError(f"{what} {value!r} is not a number from 0 to 4294967295")
    return int(value)


def parse_vsock(value: str) -> tuple[int, int]:
    """CID:PORT; a CID of -1 or 'any' is VMADDR_CID_ANY."""
    cid, _, port = value.partition(":")
    if not port:
        raise ValueError(f"vsock {value!r}: expected CID:PORT (CID -1 or 'any': any)")
    return (VMADDR_CID_ANY if cid in ("-1", "any") else _u32(cid, "CID"), _u32(port, "port"))


def parse_tipc(value: str) -> tuple[int, ...]:
    """unsock's five TIPC values: ADDRTYPE:SCOPE:TYPE:LOWER:UPPER."""
    parts = value.split(":")
    if len(parts) != 5:
        raise ValueError(f"tipc {value!r}: expected ADDRTYPE:SCOPE:TYPE:LOWER:UPPER")
    names = ("address type", "scope", "type", "lower", "upper")
    numbers = tuple(_u32(part, name) for part, name in zip(parts, names))
    if numbers[0] > 255 or numbers[1] > 127:
        raise ValueError("tipc address type is 0-255 and scope 0-127")
    return numbers


def parse_fc(value: str, cwd: str) -> tuple[str, int]:
    """UNIX_PATH:PORT of a Firecracker-style multiplexer; the path made absolute."""
    path, _, port = value.rpartition(":")
    if not path:
        raise ValueError(f"fc {value!r}: expected UNIX_PATH:PORT")
    path = _absolute(path, cwd)
    if len(path.encode()) > MAX_PATH:
        raise ValueError(f"multiplexer path is {len(path.encode())} bytes; at most {MAX_PATH}")
    return path, _u32(port, "port")


def parse_mode(value: str) -> int:
    """Octal permission bits, as chmod takes them: 600, 0660, 2770."""
    digits = value[1:] if value.startswith("0") and len(value) > 1 else value
    if not value.isascii() or not all(c in "01234567" for c in value) or len(digits) > 4:
        raise ValueError(f"mode {value!r} is not an octal file mode (like 0660)")
    return int(value, 8)


def _id_or_name(value: str, kind: str, lookup: dict[str, int]) -> int:
    if value.isascii() and value.isdigit():
        number = int(value)
        if number >= 2**32 - 1:
            raise ValueError(f"{kind} id {value} is out of range")
        return number
    if value in lookup:
        return lookup[value]
    raise ValueError(f"unknown {kind} {value!r}")


def parse_owner(value: str) -> int:
    """A user name or uid."""
    try:
        return _id_or_name(value, "user", {value: pwd.getpwnam(value).pw_uid})
    except KeyError:
        return _id_or_name(value, "user", {})


def parse_group(value: str) -> int:
    """A group name or gid."""
    try:
        return _id_or_name(value, "group", {value: grp.getgrnam(value).gr_gid})
    except KeyError:
        return _id_or_name(value, "group", {})


def _id_name(value: str, number: int, kind: str) -> str | None:
    """The name of a user or group as written, or looked up here for a number: the shim
    names them in its messages without looking anything up inside the program."""
    if not (value.isascii() and value.isdigit()):
        return value
    try:
        return pwd.getpwuid(number).pw_name if kind == "user" else grp.getgrgid(number).gr_name
    except KeyError:
        return None


def _check_template(value: str, what: str) -> None:
    """Placeholders are %p, %a, %t and %%; anything else after % is a mistake."""
    i = value.find("%")
    while i != -1:
        if i + 1 >= len(value) or value[i + 1] not in PLACEHOLDERS:
            bad = value[i:i + 2]
            raise ValueError(f"unknown placeholder {bad!r} in {what} (use %p, %a, %t or %%)")
        i = value.find("%", i + 2)


def escape_value(text: str) -> str:
    """text as a value inside a rule (the inverse of the splitting's escapes)."""
    return text.replace("\\", "\\\\").replace(",", "\\,")


def _absolute(path: str, cwd: str) -> str:
    return path if path.startswith("/") else os.path.normpath(os.path.join(cwd, path))


def parse_rule(text: str, cwd: str | None = None) -> Rule:
    """Parse one rule.  Relative paths are made absolute against *cwd* (default: ours)."""
    if cwd is None:
        cwd = os.getcwd()
    fields: dict[str, object] = {}
    actions: list[tuple[str, _Token]] = []
    seen: dict[str, _Token] = {}

    def fail(message: str, token: _Token | None = None) -> RuleError:
        return RuleError(message, text, token.column if token else 0)

    if not text.strip():
        raise fail("empty rule")
    _check_characters(text)
    for token in _split(text):
        key, equals, value = token.text.partition("=")
        has_value = bool(equals)
        key = key.strip()
        if not key:
            raise fail("empty option (doubled or trailing comma?)" if not has_value
                       else "option without a name", token)
        canonical = {"address": "addr", "datagram": "dgram"}.get(key, key)
        if canonical in seen and canonical not in ("in", "out") and \
                canonical not in TYPE_ALIASES:
            raise fail(f"{key!r} given twice", token)
        seen[canonical] = token
        try:
            if canonical in ("in", "out"):
                _no_value(key, has_value)
                fields["direction"] = canonical  # last wins, as in ip2unix
            elif canonical in TYPE_ALIASES:
                _no_value(key, has_value)
                fields["socket_type"] = TYPE_ALIASES[canonical]
            elif canonical == "addr":
                fields["address"] = parse_address(_need_value(key, has_value, value))
            elif canonical == "port":
                fields["ports"] = _parse_ports(_need_value(key, has_value, value))
            elif canonical in ("from-unix", "from-abstract"):
                pattern = _need_value(key, has_value, value)
                if len(pattern.encode()) > GLOB_MAX:
                    raise ValueError(f"pattern is {len(pattern.encode())} bytes; "
                                     f"at most {GLOB_MAX}")
                fields[canonical.replace("-", "_")] = pattern
            elif canonical == "noremove":
                _no_value(key, has_value)
                fields["noremove"] = True
            elif canonical in ("ipv4", "ipv6"):
                _no_value(key, has_value)
                if fields.get("family", canonical) != canonical:
                    raise ValueError("'ipv4' and 'ipv6' cannot be combined")
                fields["family"] = canonical
            elif canonical == "mode":
                fields["mode"] = parse_mode(_need_value(key, has_value, value))
            elif canonical == "owner":
                uid = parse_owner(_need_value(key, has_value, value))
                fields["owner"], fields["owner_name"] = uid, _id_name(value, uid, "user")
            elif canonical == "group":
                gid = parse_group(_need_value(key, has_value, value))
                fields["group"], fields["group_name"] = gid, _id_name(value, gid, "group")
            elif canonical == "slot":
                fields["slot"] = _u32(_need_value(key, has_value, value), "slot")
            elif canonical in ACTIONS:
                actions.append((canonical, token))
                _parse_action(canonical, key, has_value, value, fields, cwd)
            else:
                raise ValueError(f"unknown option {key!r}")
        except ValueError as exc:
            raise fail(str(exc), token) from None

    if not actions:
        raise fail("no action (path=, abstract=, reject, blackhole, ignore, systemd, vsock=, "
                   "tipc=, fc= or receive=)")
    if len(actions) > 1:
        raise fail(f"conflicting actions {actions[0][0]!r} and {actions[1][0]!r}",
                   actions[1][1])
    action, action_token = actions[0]
    if action == "blackhole" and fields.get("direction") != "in":
        raise fail("'blackhole' applies only to 'in' rules; add 'in'", action_token)
    if action == "fc" and fields.get("direction") == "in":
        raise fail("'fc' connects through a multiplexer; it applies to 'out' only",
                   action_token)
    if action == "systemd" and fields.get("direction") == "out":
        raise fail("'systemd' stands in for listening sockets; it applies to 'in' only",
                   action_token)
    _check_receive(action, action_token, fields, seen, fail)
    if fields.get("noremove") and action not in FILE_ACTIONS:
        raise fail("'noremove' needs a 'path=' action (or 'receive=')", seen["noremove"])
    for key in ("mode", "owner", "group"):
        if key in fields and action not in FILE_ACTIONS:
            raise fail(f"'{key}' sets socket file permissions; it needs a 'path=' action "
                       "(or 'receive=')", seen[key])
        if key in fields and fields.get("direction") == "out":
            raise fail(f"'{key}' applies to socket files a bind creates; not to 'out' rules",
                       seen[key])
    address = fields.get("address")
    if "family" in fields and isinstance(address, (ipaddress.IPv4Network,
                                                   ipaddress.IPv6Network)) \
            and f"ipv{address.version}" != fields["family"]:
        raise fail(f"address {address} is not an {fields['family']} address", seen["addr"])
    if "from_unix" in fields and "from_abstract" in fields:
        raise fail("'from-unix' and 'from-abstract' cannot be combined", seen["from-abstract"])
    if ("from_unix" in fields or "from_abstract" in fields) and \
            ("address" in fields or "ports" in fields):
        token = seen.get("addr") or seen["port"]
        raise fail("'addr'/'port' match IP sockets and cannot be combined with "
                   "'from-unix'/'from-abstract'", token)
    return Rule(action=action, text=text, **fields)  # type: ignore[arg-type]


def _check_receive(action: str, token: _Token, fields: dict[str, object],
                   seen: dict[str, _Token], fail: Callable[[str, _Token], RuleError]) -> None:
    """receive= stands in for TCP listeners; slot= names what it registers instead of a
    socket file (so no file options)."""
    if "slot" in fields and action != "receive":
        raise fail("'slot' needs a 'receive=' action", seen["slot"])
    if action != "receive":
        return
    if fields.get("direction") == "out":
        raise fail("'receive' stands in for listening sockets; it applies to 'in' only",
                   token)
    if fields.get("socket_type") == "dgram":
        raise fail("'receive' receives TCP connections; it cannot apply to 'udp'", token)
    slot = fields.pop("slot", None)
    if slot is None:
        return
    fields["numbers"] = (slot,)
    for key in ("mode", "owner", "group", "noremove"):
        if key in fields:
            raise fail(f"'{key}' applies to a receiver's socket file; 'slot=' makes none",
                       seen[key])


def _check_characters(text: str) -> None:
    """Rule text becomes C strings in the shim's environment: no NUL, and UTF-8 only
    (an argv byte that is not UTF-8 arrives as a lone surrogate)."""
    for column, ch in enumerate(text, 1):
        if ch == "\0":
            raise RuleError("NUL character", text, column)
        if "\ud800" <= ch <= "\udfff":
            byte = ord(ch) - 0xDC00
            what = f"byte 0x{byte:02x}" if 0x80 <= byte <= 0xFF else f"U+{ord(ch):04X}"
            raise RuleError(f"{what} is not valid UTF-8", text, column)


def _no_value(key: str, has_value: bool) -> None:
    if has_value:
        raise ValueError(f"{key!r} takes no value")


def _need_value(key: str, has_value: bool, value: str) -> str:
    if not has_value or value == "":
        raise ValueError(f"{key!r} needs a value ({key}=...)")
    return value


def _parse_action(action: str, key: str, has_value: bool, value: str,
                  fields: dict[str, object], cwd: str) -> None:
    if action in FILE_ACTIONS:
        what = "path" if action == "path" else "receive path"
        path = _need_value(key, has_value, value)
        _check_template(path, what)
        path = _absolute(path, cwd)
        if len(path.encode()) > MAX_PATH and "%" not in path:
            raise ValueError(f"{what} is {len(path.encode())} bytes; a Unix socket path "
                             f"holds at most {MAX_PATH}")
        fields["target"] = path
    elif action == "abstract":
        name = _need_value(key, has_value, value)
        _check_template(name, "abstract name")
        if len(name.encode()) > MAX_PATH:
            raise ValueError(f"abstract name is {len(name.encode())} bytes; at most {MAX_PATH}")
        fields["target"] = name
    elif action == "reject":
        if has_value and value == "":
            raise ValueError("'reject=' needs an errno name or number, or no '='")
        fields["reject_errno"] = parse_errno(value) if has_value else errno_module.EACCES
    elif action == "systemd":
        if has_value and value == "":
            raise ValueError("'systemd=' needs a file descriptor name, or no '='")
        fields["systemd_name"] = value if has_value else None
    elif action == "vsock":
        fields["numbers"] = parse_vsock(_need_value(key, has_value, value))
    elif action == "tipc":
        fields["numbers"] = parse_tipc(_need_value(key, has_value, value))
    elif action == "fc":
        fields["target"], port = parse_fc(_need_value(key, has_value, value), cwd)
        fields["numbers"] = (port,)
    else:  # blackhole, ignore
        _no_value(key, has_value)


def parse_rules_file(content: str, origin: str, cwd: str | None = None) -> list[Rule]:
    """One rule per line; blank lines and ``#`` comment lines are ignored."""
    rules = []
    for number, line in enumerate(content.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            rules.append(parse_rule(stripped, cwd))
        except RuleError as err:
            raise err.located(f"{origin}:{number}") from None
    return rules
