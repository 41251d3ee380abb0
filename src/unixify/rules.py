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
import ipaddress
import os
from typing import NamedTuple, Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# Actions and the matches that only make sense with some of them.
ACTIONS = ("path", "abstract", "reject", "blackhole", "ignore", "systemd")
TYPE_ALIASES = {"tcp": "stream", "stream": "stream",
                "udp": "dgram", "dgram": "dgram", "datagram": "dgram"}
MAX_PATH = 107  # sizeof(sun_path) - 1: room for the terminating NUL
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
    target: str | None = None        # path= (absolute) or abstract= name, unexpanded
    reject_errno: int | None = None
    systemd_name: str | None = None
    noremove: bool = False
    text: str = ""

    def describe(self) -> str:
        """A short human-readable form of what the rule does."""
        if self.action == "path":
            what = f"path {self.target}" + (" (noremove)" if self.noremove else "")
        elif self.action == "abstract":
            what = f"abstract @{self.target}"
        elif self.action == "reject":
            assert self.reject_errno is not None
            what = f"reject with {errno_name(self.reject_errno)}"
        elif self.action == "systemd":
            what = "systemd fd" + (f" named {self.systemd_name}" if self.systemd_name else "")
        else:
            what = self.action
        return what


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


def _check_template(value: str, what: str) -> None:
    """Placeholders are %p, %a, %t and %%; anything else after % is a mistake."""
    i = value.find("%")
    while i != -1:
        if i + 1 >= len(value) or value[i + 1] not in PLACEHOLDERS:
            bad = value[i:i + 2]
            raise ValueError(f"unknown placeholder {bad!r} in {what} (use %p, %a, %t or %%)")
        i = value.find("%", i + 2)
    if "\0" in value:
        raise ValueError(f"{what} contains a NUL character")


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
                fields[canonical.replace("-", "_")] = pattern
            elif canonical == "noremove":
                _no_value(key, has_value)
                fields["noremove"] = True
            elif canonical in ACTIONS:
                actions.append((canonical, token))
                _parse_action(canonical, key, has_value, value, fields, cwd)
            else:
                raise ValueError(f"unknown option {key!r}")
        except ValueError as exc:
            raise fail(str(exc), token) from None

    if not actions:
        raise fail("no action (path=, abstract=, reject, blackhole, ignore or systemd)")
    if len(actions) > 1:
        raise fail(f"conflicting actions {actions[0][0]!r} and {actions[1][0]!r}",
                   actions[1][1])
    action, action_token = actions[0]
    if action == "blackhole" and fields.get("direction") != "in":
        raise fail("'blackhole' applies only to 'in' rules; add 'in'", action_token)
    if action == "systemd" and fields.get("direction") == "out":
        raise fail("'systemd' stands in for listening sockets; it applies to 'in' only",
                   action_token)
    if fields.get("noremove") and action != "path":
        raise fail("'noremove' needs a 'path=' action", seen["noremove"])
    if "from_unix" in fields and "from_abstract" in fields:
        raise fail("'from-unix' and 'from-abstract' cannot be combined", seen["from-abstract"])
    if ("from_unix" in fields or "from_abstract" in fields) and \
            ("address" in fields or "ports" in fields):
        token = seen.get("addr") or seen["port"]
        raise fail("'addr'/'port' match IP sockets and cannot be combined with "
                   "'from-unix'/'from-abstract'", token)
    return Rule(action=action, text=text, **fields)  # type: ignore[arg-type]


def _no_value(key: str, has_value: bool) -> None:
    if has_value:
        raise ValueError(f"{key!r} takes no value")


def _need_value(key: str, has_value: bool, value: str) -> str:
    if not has_value or value == "":
        raise ValueError(f"{key!r} needs a value ({key}=...)")
    return value


def _parse_action(action: str, key: str, has_value: bool, value: str,
                  fields: dict[str, object], cwd: str) -> None:
    if action == "path":
        path = _need_value(key, has_value, value)
        _check_template(path, "path")
        path = _absolute(path, cwd)
        if len(path.encode()) > MAX_PATH and "%" not in path:
            raise ValueError(f"path is {len(path.encode())} bytes; a Unix socket path "
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
