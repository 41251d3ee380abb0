"""The ``unixify`` command: parse rules, then run a program with the shim preloaded.

Compatible with ip2unix's command line: options stop at the first non-option, so the
program's own arguments are never parsed; ``--`` works too.  On success the program
replaces this process, so its exit status is the program's.
"""

from __future__ import annotations

import getopt
import os
import sys
from typing import NoReturn

from unixify import __version__
from unixify.encoding import ENV_RULES, ENV_VERBOSE, encode_rules
from unixify.rules import Rule, RuleError, parse_rule, parse_rules_file

USAGE = """\
usage: unixify [-v...] [-p] (-r RULE | -f FILE)... PROGRAM [ARGS...]
       unixify -c [-p] (-r RULE | -f FILE)...
       unixify explain (-r RULE | -f FILE)... [--] in|out tcp|udp ADDRESS PORT
       unixify explain (-r RULE | -f FILE)... [--] in|out tcp|udp unix PATH|abstract NAME
       unixify --lib | --version | --help

Run PROGRAM with its IP sockets turned into Unix domain sockets by RULEs.

options:
  -r, --rule RULE   add a rule (repeatable; first matching rule wins)
  -f, --file FILE   read rules from FILE, one per line, '#' comments
  -c, --check       validate the rules and exit
  -p, --print       print the rule table (stdout with -c, else stderr)
  -v, --verbose     log more from inside the program (repeatable)
      --lib         print the path of the preload library and exit
      --version     print the version and exit
  -h, --help        show this help and exit

A rule is comma-separated matches and one action, e.g.
  in,tcp,port=8000,path=/run/app.sock     out,addr=10.0.0.0/8,reject=ECONNREFUSED
matches: in | out, tcp | udp, addr=ADDRESS[/PREFIX], port=PORT[-PORT],
         from-unix=GLOB, from-abstract=GLOB (programs using Unix sockets already)
actions: path=PATH (%p port, %a address, %t tcp/udp, %% percent), abstract=NAME,
         reject[=ERRNO], blackhole, ignore, systemd[=FDNAME]; flag: noremove
"""


class UsageError(Exception):
    """Bad command line; the message is complete."""


def fail(message: str, status: int = 1) -> NoReturn:
    sys.stderr.write(f"unixify: {message}\n")
    sys.exit(status)


def load_rules(sources: list[tuple[str, str]]) -> list[Rule]:
    rules: list[Rule] = []
    cwd = os.getcwd()
    rule_number = 0
    for kind, value in sources:
        if kind == "rule":
            rule_number += 1
            try:
                rules.append(parse_rule(value, cwd))
            except RuleError as err:
                raise err.located(f"-r #{rule_number}") from None
        else:
            try:
                with open(value, encoding="utf-8") as handle:
                    content = handle.read()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise UsageError(f"cannot read rule file {value!r}: {reason}") from None
            rules.extend(parse_rules_file(content, value, cwd))
    return rules


def check_passed_sockets(rules: list[Rule]) -> None:
    """A 'systemd' rule needs sockets passed to us by LISTEN_FDS/LISTEN_PID."""
    number = next((n for n, rule in enumerate(rules, 1) if rule.action == "systemd"), 0)
    if not number:
        return
    where = f"rule {number} {rules[number - 1].text!r}"
    if "LISTEN_FDS" not in os.environ:
        raise UsageError(f"{where}: no sockets were passed (LISTEN_FDS is not set); run "
                         "under systemd socket activation or systemd-socket-activate")
    pid = os.environ.get("LISTEN_PID", "")
    if pid != str(os.getpid()):
        raise UsageError(f"{where}: LISTEN_PID is {pid or 'unset'}, not this process "
                         f"({os.getpid()}); the passed sockets are not ours")


def format_table(rules: list[Rule]) -> str:
    rows = [("#", "dir", "type", "match", "action")]
    for number, rule in enumerate(rules, 1):
        match = []
        if rule.address is not None:
            match.append(f"addr={rule.address}")
        if rule.ports is not None:
            low, high = rule.ports
            match.append(f"port={low}" if low == high else f"port={low}-{high}")
        if rule.from_unix is not None:
            match.append(f"from-unix={rule.from_unix}")
        if rule.from_abstract is not None:
            match.append(f"from-abstract={rule.from_abstract}")
        kind = {"stream": "tcp", "dgram": "udp"}.get(rule.socket_type or "", "any")
        rows.append((str(number), rule.direction or "both", kind,
                     " ".join(match) or "any", rule.describe()))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
             for row in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def find_program(name: str) -> str | None:
    if "/" in name:
        return name if os.path.exists(name) else None
    for directory in os.get_exec_path():
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def is_static_elf(path: str) -> bool:
    """True for an ELF executable with no program interpreter: LD_PRELOAD cannot reach it."""
    import struct

    try:
        with open(path, "rb") as handle:
            header = handle.read(64)
            if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] not in (1, 2):
                return False
            is64 = header[4] == 2
            order = "<" if header[5] == 1 else ">"
            if is64:
                phoff, = struct.unpack_from(order + "Q", header, 32)
                phentsize, phnum = struct.unpack_from(order + "HH", header, 54)
            else:
                phoff, = struct.unpack_from(order + "I", header, 28)
                phentsize, phnum = struct.unpack_from(order + "HH", header, 42)
            handle.seek(phoff)
            table = handle.read(phentsize * phnum)
    except OSError:
        return False
    pt_interp = 3
    types = [struct.unpack_from(order + "I", table, i * phentsize)[0]
             for i in range(phnum) if (i + 1) * phentsize <= len(table)]
    return pt_interp not in types


def build_environment(rules: list[Rule], verbosity: int) -> dict[str, str]:
    from unixify.shim import library_path

    env = dict(os.environ)
    library = library_path()
    preload = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{library} {preload}" if preload else library
    env[ENV_RULES] = encode_rules(rules)
    env[ENV_VERBOSE] = str(1 + verbosity)
    return env


def run_explain(argv: list[str]) -> int:
    from unixify.explain import explain, parse_query

    try:
        options, rest = getopt.getopt(argv, "r:f:", ["rule=", "file="])
    except getopt.GetoptError as err:
        raise UsageError(f"explain: {err.msg} (see 'unixify --help')") from None
    sources = [("rule" if option in ("-r", "--rule") else "file", value)
               for option, value in options]
    if not sources:
        raise UsageError("explain: no rules given; use -r RULE or -f FILE")
    rules = load_rules(sources)
    try:
        query = parse_query(rest)
    except ValueError as err:
        raise UsageError(f"explain: {err}") from None
    sys.stdout.write(explain(rules, query))
    return 0


def run(argv: list[str]) -> int:
    if argv[:1] == ["explain"]:
        return run_explain(argv[1:])
    try:
        options, rest = getopt.getopt(
            argv, "r:f:cpvh",
            ["rule=", "file=", "check", "print", "verbose", "help", "version", "lib"])
    except getopt.GetoptError as err:
        raise UsageError(f"{err.msg} (see 'unixify --help')") from None
    sources: list[tuple[str, str]] = []
    check = show = False
    verbosity = 0
    for option, value in options:
        if option in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        if option == "--version":
            sys.stdout.write(f"unixify {__version__}\n")
            return 0
        if option == "--lib":
            from unixify.shim import library_path

            sys.stdout.write(library_path() + "\n")
            return 0
        if option in ("-r", "--rule"):
            sources.append(("rule", value))
        elif option in ("-f", "--file"):
            sources.append(("file", value))
        elif option in ("-c", "--check"):
            check = True
        elif option in ("-p", "--print"):
            show = True
        elif option in ("-v", "--verbose"):
            verbosity += 1

    if not sources:
        raise UsageError("no rules given; use -r RULE or -f FILE (see 'unixify --help')")
    rules = load_rules(sources)
    if show:
        (sys.stdout if check else sys.stderr).write(format_table(rules))
    if check:
        if rest:
            raise UsageError("-c checks rules only; it takes no program")
        return 0
    if not rest:
        raise UsageError("no program to run (see 'unixify --help')")
    check_passed_sockets(rules)
    program = find_program(rest[0])
    if program is None:
        fail(f"{rest[0]}: command not found", 127)
    if is_static_elf(program):
        raise UsageError(f"{program} is statically linked; preloading cannot reach its "
                         "sockets, so its IP ports would open unconverted")
    env = build_environment(rules, verbosity)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(program, rest, env)
    except OSError as exc:
        fail(f"cannot run {rest[0]}: {exc.strerror}", 126)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except (RuleError, UsageError) as err:
        fail(str(err))
    except FileNotFoundError as err:
        fail(str(err))
    except KeyboardInterrupt:
        return 130
