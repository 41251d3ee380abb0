"""Can the preload reach a program?  The launcher refuses one it cannot, since that
program's IP ports would open unconverted.

LD_PRELOAD reaches the socket calls of a dynamically linked program that makes them
through the C library, and only when the dynamic linker honours it.  Not reached:

* a statically linked program (no program interpreter, nothing reads LD_PRELOAD);
* a Go program: it makes its own system calls even when dynamically linked;
* a program exec() starts in secure-execution mode (AT_SECURE), where glibc drops
  LD_PRELOAD: set-user-ID or set-group-ID to someone else, or file capabilities the
  exec would grant.  The kernel's rule (security/commoncap.c) is: secure when the new
  effective uid differs from the caller's real uid, or the new effective gid from its
  real gid, or -- for a caller whose real uid is not 0 -- when the file's capabilities
  have the effective bit or grant any permitted capability.  Set-id bits and file
  capabilities count for nothing on a nosuid mount or under no_new_privs.

A ``#!`` script is followed to its interpreter, and ``#!/usr/bin/env NAME`` to NAME
through PATH, since that is what runs (the kernel ignores set-id bits on scripts).
"""

from __future__ import annotations

import os
import stat
import struct
from typing import BinaryIO, NamedTuple

GO_BUILDINFO_MAGIC = b"\xff Go buildinf:"
MAX_SCRIPT_DEPTH = 4       # the kernel follows at most this many #! levels
_PT_INTERP = 3
_VFS_CAP_REVISION_MASK = 0xFF000000
_VFS_CAP_FLAGS_EFFECTIVE = 0x000001


class ElfFacts(NamedTuple):
    dynamic: bool   # has a program interpreter (PT_INTERP)
    go: bool        # has Go build information


def elf_facts(path: str) -> ElfFacts | None:
    """What the ELF headers of path say; None when it is not an ELF file."""
    try:
        with open(path, "rb") as handle:
            return _read_elf(handle)
    except (OSError, struct.error):
        return None


def _read_elf(handle: BinaryIO) -> ElfFacts | None:
    header = handle.read(64)
    if len(header) < 52 or header[:4] != b"\x7fELF" or header[4] not in (1, 2):
        return None
    order = "<" if header[5] == 1 else ">"
    if header[4] == 2:
        phoff, shoff = struct.unpack_from(order + "QQ", header, 32)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(
            order + "HHHHH", header, 54)
    else:
        phoff, shoff = struct.unpack_from(order + "II", header, 28)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(
            order + "HHHHH", header, 42)
    handle.seek(phoff)
    table = handle.read(phentsize * phnum)
    types = [struct.unpack_from(order + "I", table, i * phentsize)[0]
             for i in range(phnum) if (i + 1) * phentsize <= len(table)]
    names = _section_names(handle, order, header[4] == 2, shoff, shentsize, shnum,
                           shstrndx)
    go = ".go.buildinfo" in names if names else _has_magic(handle, GO_BUILDINFO_MAGIC)
    return ElfFacts(_PT_INTERP in types, go)


def _section_names(handle: BinaryIO, order: str, is64: bool, shoff: int, shentsize: int,
                   shnum: int, shstrndx: int) -> set[str]:
    """The names in the section header table (empty when it is missing or damaged)."""
    if not shoff or not shnum or shstrndx >= shnum or shentsize < (64 if is64 else 40):
        return set()
    handle.seek(shoff)
    table = handle.read(shentsize * shnum)
    if len(table) < shentsize * shnum:
        return set()
    # sh_name at 0; sh_offset, sh_size at 24/32 (64-bit) or 16/20 (32-bit)
    layout, at = (order + "QQ", 24) if is64 else (order + "II", 16)
    offset, size = struct.unpack_from(layout, table, shstrndx * shentsize + at)
    handle.seek(offset)
    strings = handle.read(min(size, 1 << 20))
    names = set()
    for i in range(shnum):
        start, = struct.unpack_from(order + "I", table, i * shentsize)
        end = strings.find(b"\0", start)
        names.add(strings[start:end if end >= 0 else len(strings)].decode("latin-1"))
    return names


def _has_magic(handle: BinaryIO, magic: bytes) -> bool:
    """A scan of the whole file, for programs stripped of their section headers."""
    handle.seek(0)
    tail = b""
    while chunk := handle.read(1 << 20):
        if magic in tail + chunk:
            return True
        tail = chunk[-len(magic):]
    return False


def _status_fields() -> dict[str, str]:
    try:
        with open("/proc/self/status", "rb") as status:
            text = status.read().decode("ascii", "replace")
    except OSError:
        return {}
    return dict(line.partition(":\t")[::2] for line in text.splitlines())


def _capabilities_granted(path: str) -> bool:
    """Would exec give a caller whose real uid is not 0 capabilities from path's
    security.capability (effective bit, or any permitted capability)?"""
    try:
        data = os.getxattr(path, "security.capability")
    except OSError:
        return False
    if len(data) < 12:
        return True  # malformed: the kernel refuses the exec; say it is not reachable
    magic, permitted, inheritable = struct.unpack_from("<III", data)
    if len(data) >= 20 and magic & _VFS_CAP_REVISION_MASK != 0x01000000:
        high_p, high_i = struct.unpack_from("<II", data, 12)
        permitted |= high_p << 32
        inheritable |= high_i << 32
    fields = _status_fields()
    bounding = int(fields.get("CapBnd", "f" * 16), 16)
    caller_inheritable = int(fields.get("CapInh", "0"), 16)
    gained = (permitted & bounding) | (inheritable & caller_inheritable)
    return bool(magic & _VFS_CAP_FLAGS_EFFECTIVE or gained)


def secure_execution(path: str) -> str | None:
    """Why exec of path would run in secure-execution mode for us, or None."""
    try:
        st = os.stat(path)
        privileges_count = not os.statvfs(path).f_flag & os.ST_NOSUID
    except OSError:
        return None
    privileges_count = privileges_count and _status_fields().get("NoNewPrivs", "0") == "0"
    setuid = privileges_count and bool(st.st_mode & stat.S_ISUID)
    setgid = privileges_count and bool(st.st_mode & stat.S_ISGID)
    euid = st.st_uid if setuid else os.geteuid()
    egid = st.st_gid if setgid else os.getegid()
    if euid != os.getuid():
        return (f"is set-user-ID to uid {euid}" if setuid
                else f"would run with effective uid {euid}, not our real uid {os.getuid()}")
    if egid != os.getgid():
        return (f"is set-group-ID to gid {egid}" if setgid
                else f"would run with effective gid {egid}, not our real gid {os.getgid()}")
    if privileges_count and os.getuid() != 0 and _capabilities_granted(path):
        return "has file capabilities that exec would grant"
    return None


def _interpreter(path: str) -> list[str] | None:
    """The #! line of a script, split like the kernel does (interpreter, one argument)."""
    try:
        with open(path, "rb") as handle:
            line = handle.read(256).split(b"\n", 1)[0]
    except OSError:
        return None
    if not line.startswith(b"#!"):
        return None
    words = os.fsdecode(line[2:]).strip().split(None, 1)
    return words or None


def find_program(name: str) -> str | None:
    """name as exec*p() finds it: as given when it has a '/', else through PATH."""
    if "/" in name:
        return name if os.path.exists(name) else None
    for directory in os.get_exec_path():
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _env_command(words: list[str]) -> str | None:
    """The command '#!/usr/bin/env [-S] [-u NAME] [NAME=VALUE]... COMMAND' runs."""
    skip = False
    for word in " ".join(words).split():
        if skip or word.startswith("-") or "=" in word:
            skip = word in ("-u", "--unset", "-C", "--chdir")
            continue
        return find_program(word)
    return None


def unreachable(program: str) -> str | None:
    """Why the preload cannot reach program's sockets, as a phrase that completes
    "<program> ...", or None when it can."""
    return classify(program)[1]


def classify(program: str) -> tuple[str, str | None]:
    """Which back end can serve program: ("preload", None); ("seccomp", why the preload
    cannot) for a static or Go program; ("none", why) for one exec() would start in
    secure-execution mode (no_new_privs would drop its privileges instead)."""
    path, chain = program, ""
    for _ in range(MAX_SCRIPT_DEPTH + 1):
        interpreter = _interpreter(path)
        if interpreter is None:
            break
        path = interpreter[0]
        chain += f"runs {path}, which "
        if os.path.basename(path) == "env":
            found = _env_command(interpreter[1:])
            kind, why = _binary_kind(path)
            if why or found is None:
                return (kind, chain + why) if why else ("preload", None)
            path = found
            chain += f"runs {path}, which "
    kind, why = _binary_kind(path)
    return (kind, chain + why) if why else ("preload", None)


def _binary_kind(path: str) -> tuple[str, str | None]:
    secure = secure_execution(path)
    if secure:
        return ("none", f"{secure}: the dynamic linker drops LD_PRELOAD in "
                "secure-execution mode, so its IP ports would open unconverted")
    facts = elf_facts(path)
    if facts is not None and not facts.dynamic:
        return ("seccomp", "is statically linked; preloading cannot reach its sockets, so "
                "its IP ports would open unconverted")
    if facts is not None and facts.go:
        return ("seccomp", "is a Go program, which makes its own system calls; preloading "
                "cannot reach its sockets, so its IP ports would open unconverted")
    return ("preload", None)
