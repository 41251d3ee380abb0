"""The compact encoding of parsed rules that the shim reads from ``UNIXIFY_RULES``.

Only the Python parser reads rule text; the shim reads this instead.  The format is
versioned and length-delimited, so the C side needs no unescaping and can validate every
byte::

    encoding := "UFY1" rule*
    rule     := "{" field* "}"
    field    := KEY LENGTH ":" BYTES      (KEY: one ASCII letter, LENGTH: decimal)

Keys: ``d`` direction (``i``/``o``), ``t`` type (``s``/``d``), ``a`` address as hex of
the packed address, ``/`` and the prefix length, ``p`` port range ``LOW-HIGH``, ``A``
action letter, ``T`` path or abstract name (unexpanded; fc: the proxy path; receive:
the receiver or control socket path), ``v``
colon-separated numbers (vsock cid:port, tipc's five values, fc port, receive's slot),
``e`` errno, ``n`` noremove, ``N`` systemd fd name, ``u`` from-unix glob, ``b`` from-abstract glob,
``f`` address family (``4``/``6``), ``m`` socket file mode (octal), ``o`` owner uid,
``g`` group gid, ``O`` and ``G`` their names (for messages only).

An encoding longer than ``INLINE_MAX`` bytes goes into a file instead (the kernel takes
at most 128 KiB in one environment string), and ``UNIXIFY_RULES`` names it:
``@SIZE:FLAGS:PATH``, FLAGS ``S`` when some rule has the systemd action (the shim needs
to know that before it reads the file).  The file lives in a directory of the user's
own, under a name made from its contents, so launches with the same rules share it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable

from unixify.rules import Rule

MAGIC = "UFY1"
# The shim's limits (src/shim/rules.c): checked here, so that what the launcher accepts
# always loads there.
MAX_RULES = 100_000
MAX_ENCODING = 64 << 20
# Larger encodings go into a file; this leaves the rest of the environment and the
# arguments room below the kernel's limits.
INLINE_MAX = 64 << 10
ENV_RULES = "UNIXIFY_RULES"
ENV_VERBOSE = "UNIXIFY_VERBOSE"
ACTION_LETTERS = {"path": "P", "abstract": "A", "reject": "R", "blackhole": "B",
                  "ignore": "I", "systemd": "S", "vsock": "V", "tipc": "C", "fc": "F",
                  "receive": "E"}


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
    if rule.owner_name is not None:
        fields.append(_field("O", rule.owner_name))
    if rule.group_name is not None:
        fields.append(_field("G", rule.group_name))
    return "{" + "".join(fields) + "}"


def encode_rules(rules: Iterable[Rule]) -> str:
    return MAGIC + "".join(encode_rule(rule) for rule in rules)


class LimitError(ValueError):
    """A rule set beyond the shim's limits, or no place to put it; a complete line."""


def encode_checked(rules: list[Rule]) -> bytes:
    """The encoding of rules as the shim reads it, within the shim's limits."""
    if len(rules) > MAX_RULES:
        raise LimitError(f"more rules than the limit of {MAX_RULES} ({len(rules)} given)")
    encoded = os.fsencode(encode_rules(rules))
    if len(encoded) > MAX_ENCODING:
        raise LimitError(f"the rules encode to {len(encoded)} bytes, more than the limit "
                         f"of {MAX_ENCODING}")
    return encoded


def _private_directory() -> tuple[str, int]:
    """Our directory for rules files and an fd of it: made 0711 by us (a program that
    gives up root may still read its rules), or refused unless ours and writable by
    nobody else."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    # root first in /run: a login's runtime directory is 0700, out of reach of a server
    # that gives up root
    candidates = ["/run/unixify"] if os.geteuid() == 0 else []
    if os.path.isabs(runtime):
        candidates.append(os.path.join(runtime, "unixify"))
    candidates.append(f"/tmp/unixify-{os.geteuid()}")
    for path in candidates:
        try:
            os.mkdir(path, 0o711)
            made = True
        except FileExistsError:
            made = False
        except OSError:
            continue  # no such parent, or not ours to write: the next place
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as err:
            raise LimitError(f"cannot use {path} for the rules file: {err.strerror}") from None
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or info.st_mode & 0o022:
            os.close(fd)
            raise LimitError(f"{path} is not a private directory of ours (owner "
                             f"{info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}); "
                             "remove it or set XDG_RUNTIME_DIR")
        if made:
            os.fchmod(fd, 0o711)
        return path, fd
    raise LimitError("no directory for the rules file (tried "
                     + ", ".join(candidates) + ")")


def _same_file(name: str, data: bytes, directory: int) -> bool:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=directory)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        return (stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()
                and not info.st_mode & 0o022 and handle.read() == data)


def write_rules_file(data: bytes) -> str:
    """The path of a file holding data, in our private directory, named by its digest:
    written (atomically) unless an identical one is there."""
    path, directory = _private_directory()
    name = f"rules-{hashlib.sha256(data).hexdigest()}"
    try:
        if _same_file(name, data, directory):
            os.utime(name, dir_fd=directory, follow_symlinks=False)  # still in use
            return os.path.join(path, name)
        temporary = f".{name}.{os.getpid()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o644, dir_fd=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                os.fchmod(handle.fileno(), 0o644)
            os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            os.unlink(temporary, dir_fd=directory)
            raise
    except OSError as err:
        raise LimitError(f"cannot write the rules file in {path}: {err.strerror}") from None
    finally:
        os.close(directory)
    return os.path.join(path, name)


def rules_variable(rules: list[Rule], encoded: bytes) -> str:
    """UNIXIFY_RULES's value for the launcher: the encoding itself when it is small,
    else a reference to a file holding it."""
    if len(encoded) <= INLINE_MAX:
        return os.fsdecode(encoded)
    flags = "S" if any(rule.action == "systemd" for rule in rules) else ""
    return f"@{len(encoded)}:{flags}:{write_rules_file(encoded)}"
