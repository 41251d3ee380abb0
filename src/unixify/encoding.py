"""The compact encoding of parsed rules that the shim reads from ``UNIXIFY_RULES``.

Only the Python parser reads rule text; the shim reads this instead.  The format is
versioned and length-delimited, so the C side needs no unescaping and can validate every
byte::

    encoding := "UFY1" rule*
    rule     := "{" field* "}"
    field    := KEY LENGTH ":" BYTES      (KEY: one ASCII letter, LENGTH: decimal)

Keys: ``d`` direction (``i``/``o``), ``t`` type (``s``/``d``), ``a`` address as hex of
the packed address, ``/`` and the prefix length, ``p`` port range ``LOW-HIGH``, ``A``
action letter, ``T`` path or abstract name (unexpanded; fc: the proxy path), ``v``
colon-separated numbers (vsock cid:port, tipc's five values, fc port), ``e`` errno, ``n``
noremove, ``N`` systemd fd name, ``u`` from-unix glob, ``b`` from-abstract glob,
``f`` address family (``4``/``6``), ``m`` socket file mode (octal), ``o`` owner uid,
``g`` group gid.
"""

from __future__ import annotations

from collections.abc import Iterable

from unixify.rules import Rule

MAGIC = "UFY1"
ENV_RULES = "UNIXIFY_RULES"
ENV_VERBOSE = "UNIXIFY_VERBOSE"
ACTION_LETTERS = {"path": "P", "abstract": "A", "reject": "R", "blackhole": "B",
                  "ignore": "I", "systemd": "S", "vsock": "V", "tipc": "C", "fc": "F"}


def _field(key: str, value: str) -> str:
    return f"{key}{len(value.encode())}:{value}"


def encode_rule(rule: Rule) -> str:
    fields = [_field("A", ACTION_LETTERS[rule.action])]
    if rule.direction:
        fields.append(_field("d", rule.direction[0]))
    if rule.socket_type:
        fields.append(_field("t", rule.socket_type[0]))
    if rule.address is not None:
        packed = rule.address.network_address.packed.hex()
        fields.append(_field("a", f"{packed}/{rule.address.prefixlen}"))
    if rule.ports is not None:
        fields.append(_field("p", f"{rule.ports[0]}-{rule.ports[1]}"))
    if rule.target is not None:
        fields.append(_field("T", rule.target))
    if rule.numbers:
        fields.append(_field("v", ":".join(str(n) for n in rule.numbers)))
    if rule.reject_errno is not None:
        fields.append(_field("e", str(rule.reject_errno)))
    if rule.noremove:
        fields.append(_field("n", "1"))
    if rule.systemd_name is not None:
        fields.append(_field("N", rule.systemd_name))
    if rule.from_unix is not None:
        fields.append(_field("u", rule.from_unix))
    if rule.from_abstract is not None:
        fields.append(_field("b", rule.from_abstract))
    if rule.family is not None:
        fields.append(_field("f", rule.family[-1]))
    if rule.mode is not None:
        fields.append(_field("m", f"{rule.mode:o}"))
    if rule.owner is not None:
        fields.append(_field("o", str(rule.owner)))
    if rule.group is not None:
        fields.append(_field("g", str(rule.group)))
    return "{" + "".join(fields) + "}"


def encode_rules(rules: Iterable[Rule]) -> str:
    return MAGIC + "".join(encode_rule(rule) for rule in rules)
