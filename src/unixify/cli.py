"""The ``unixify`` command: parse rules, then run a program with the shim preloaded.

Compatible with ip2unix's command line: options stop at the first non-option, so the
program's own arguments are never parsed; ``--`` works too.  On success the program
replaces this process, so its exit status is the program's.
"""

from __future__ import annotations

import getopt
import os
import stat
import sys
from typing import NoReturn

from unixify import __version__
from unixify.encoding import (
    ENV_RULES,
    ENV_VERBOSE,
    INLINE_MAX,
    LimitError,
    encode_checked,
    rules_variable,
)
from unixify.reach import classify, find_program
from unixify.rules import Rule, RuleError, parse_mode, parse_rule, parse_rules_file
from unixify.shim import ShimError, library_path, loadable_preload, supervisor_path

USAGE = """\
usage: unixify [-v...] [-p] [--mode OCTAL] [--backend B] (-r RULE | -f FILE)... PROGRAM [ARGS...]
       unixify -c [-p] (-r RULE | -f FILE)...
       unixify explain [--program PROG] (-r RULE | -f FILE)... [--] in|out tcp|udp ADDRESS PORT
       unixify explain [--program PROG] (-r RULE | -f FILE)... [--] in|out tcp|udp
                       unix PATH|abstract NAME
       unixify inetd [--max-children N] [--mode OCTAL] [--owner USER] [--group GROUP]
                     --receive PATH [--slot N] -- PROGRAM [ARGS...]
       unixify dispatch [-v] FILE | --check FILE | --status FILE | --from-socketbox FILE
       unixify --lib | --version | --help

Run PROGRAM with its IP sockets turned into Unix domain sockets by RULEs.

options:
  -r, --rule RULE   add a rule (repeatable; first matching rule wins)
  -f, --file FILE   read rules from FILE, one per line, '#' comments
  -c, --check       validate the rules and exit
  -p, --print       print the rule table (stdout with -c, else stderr)
  -v, --verbose     log more from inside the program (repeatable)
      --mode OCTAL  socket file mode for path=/receive= rules without mode= (e.g. 0600)
      --backend B   preload (the shim, for programs using libc's socket calls),
                    seccomp (a supervisor answering the program's system calls: static
                    and Go programs), or auto (the default: seccomp for static and Go
                    programs, preload otherwise)
      --program PROG  (explain) check PROG as the launcher would: static and Go
                    programs run under the seccomp back end; set-id programs and ones
                    with file capabilities are refused
      --lib         print the path of the preload library and exit
      --version     print the version and exit
  -h, --help        show this help and exit

A rule is comma-separated matches and one action, e.g.
  in,tcp,port=8000,path=/run/app.sock     out,addr=10.0.0.0/8,reject=ECONNREFUSED
matches: in | out, tcp | udp, addr=ADDRESS[/PREFIX], port=PORT[-PORT],
         from-unix=GLOB, from-abstract=GLOB (programs using Unix sockets already)
actions: path=PATH (%p port, %a address, %t tcp/udp, %% percent), abstract=NAME,
         reject[=ERRNO], blackhole, ignore, systemd[=FDNAME], vsock=CID:PORT,
         tipc=ADDRTYPE:SCOPE:TYPE:LOWER:UPPER, fc=UNIX_PATH:PORT,
         receive=PATH[,slot=N] (take TCP connections a dispatcher passes)
with path= or receive=: noremove, mode=OCTAL, owner=USER|UID, group=GROUP|GID
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


def build_environment(rules: list[Rule], encoded: bytes, verbosity: int) -> dict[str, str]:
    # UNIXIFY_INHERIT (and its _1, _2... parts) is the library's message from an exec
    # inside a wrapped program to its new image; from our caller it is stale or forged.
    env = {k: v for k, v in os.environ.items()
           if k != "UNIXIFY_INHERIT" and not k.startswith("UNIXIFY_INHERIT_")}
    library = loadable_preload()
    preload = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{library} {preload}" if preload else library
    env[ENV_RULES] = rules_variable(rules, encoded)
    env[ENV_VERBOSE] = str(1 + verbosity)
    return env


def with_default_mode(rules: list[Rule], mode: int | None) -> list[Rule]:
    """--mode: the socket file mode of path= rules that give none."""
    if mode is None:
        return rules
    return [rule._replace(mode=mode)
            if rule.action in ("path", "receive") and not rule.numbers and rule.mode is None
            and rule.direction != "out"
            else rule for rule in rules]


def rules_from_options(options: list[tuple[str, str]], command: str = "") -> list[Rule]:
    """The rules of the -r/-f options, in order, with --mode applied; other options are
    the caller's.  No rules at all is a usage error."""
    prefix = f"{command}: " if command else ""
    sources: list[tuple[str, str]] = []
    mode = None
    for option, value in options:
        if option in ("-r", "--rule"):
            sources.append(("rule", value))
        elif option in ("-f", "--file"):
            sources.append(("file", value))
        elif option == "--mode":
            try:
                mode = parse_mode(value)
            except ValueError as err:
                raise UsageError(f"{prefix}--mode: {err}") from None
    if not sources:
        raise UsageError(f"{prefix}no rules given; use -r RULE or -f FILE "
                         "(see 'unixify --help')")
    return with_default_mode(load_rules(sources), mode)


def run_env(argv: list[str]) -> int:
    """Print LD_PRELOAD and UNIXIFY_RULES for people who set the environment themselves
    (a systemd EnvironmentFile=, a container's environment, eval in a shell)."""
    import shlex

    try:
        options, rest = getopt.getopt(argv, "r:f:", ["rule=", "file=", "mode="])
    except getopt.GetoptError as err:
        raise UsageError(f"env: {err.msg} (see 'unixify --help')") from None
    if rest:
        raise UsageError(f"env: unexpected {rest[0]!r}; it takes rules only")
    rules = rules_from_options(options, "env")
    try:
        encoded = encode_checked(rules)
    except LimitError as err:
        raise UsageError(f"env: {err}") from None
    if len(encoded) > INLINE_MAX:  # a file named here would not follow the line elsewhere
        raise UsageError(f"env: the rules encode to {len(encoded)} bytes, more than "
                         f"{INLINE_MAX} for one environment variable; run the program "
                         "with 'unixify -f FILE PROGRAM', which passes them in a file")
    sys.stdout.write(f"LD_PRELOAD={shlex.quote(library_path())}\n"
                     f"{ENV_RULES}={shlex.quote(os.fsdecode(encoded))}\n")
    return 0


def run_explain(argv: list[str]) -> int:
    from unixify.explain import explain, parse_query

    try:
        options, rest = getopt.getopt(argv, "r:f:", ["rule=", "file=", "program="])
    except getopt.GetoptError as err:
        raise UsageError(f"explain: {err.msg} (see 'unixify --help')") from None
    rules = rules_from_options(options, "explain")
    try:
        query = parse_query(rest)
    except ValueError as err:
        raise UsageError(f"explain: {err}") from None
    names = [value for option, value in options if option == "--program"]
    refusal = None
    if not names:
        note = ("(as in a program the preload reaches: dynamically linked, socket calls "
                "through the C library; --program PATH checks one)")
    else:
        program = find_program(names[-1])
        if program is None:
            raise UsageError(f"explain: {names[-1]}: command not found")
        kind, why = classify(program)
        refusal = f"unixify refuses to run it: {program} {why}" if kind == "none" else None
        note = {"preload": f"({program}: the preload reaches it)",
                "seccomp": f"({program}: runs under the seccomp back end: it "
                           f"{(why or '').split(';')[0].split(',')[0]})"}.get(kind, "")
    sys.stdout.write((note + "\n" if note else "") + explain(rules, query, refusal))
    return 0


CONTROL_USAGE = ("usage: unixify control-file create FILE (--vsock CID:PORT | "
                 "--tipc ADDRTYPE:SCOPE:TYPE:LOWER:UPPER | --fc UNIX_PATH:PORT) "
                 "[--option LEVEL:NAME:INT]...\n       unixify control-file show FILE\n")


def run_control_file(argv: list[str]) -> int:
    from unixify import controlfile
    from unixify.rules import parse_fc, parse_tipc, parse_vsock

    if argv[:1] in (["-h"], ["--help"]):
        sys.stdout.write(CONTROL_USAGE)
        return 0
    if len(argv) < 2 or argv[0] not in ("create", "show"):
        raise UsageError("control-file: expected 'create FILE ...' or 'show FILE' "
                         "(see 'unixify control-file --help')")
    command, path, rest = argv[0], argv[1], argv[2:]
    try:
        if command == "show":
            if rest:
                raise UsageError(f"control-file show: unexpected {rest[0]!r}")
            target = controlfile.show(path)
            sys.stdout.write(f"{path}: {target.describe()}\n")
            for level, name, raw in target.options:
                number = int.from_bytes(raw[:4], "little", signed=True)
                sys.stdout.write(f"  option level {level} name {name} value {number}\n")
            return 0
        options, extra = getopt.getopt(rest, "", ["vsock=", "tipc=", "fc=", "option="])
        if extra:
            raise UsageError(f"control-file create: unexpected {extra[0]!r}")
        kinds = [(o[2:], v) for o, v in options if o != "--option"]
        if len(kinds) != 1:
            raise UsageError("control-file create: give exactly one of --vsock, --tipc, --fc")
        kind, value = kinds[0]
        proxy = None
        if kind == "vsock":
            numbers: tuple[int, ...] = parse_vsock(value)
        elif kind == "tipc":
            numbers = parse_tipc(value)
        else:
            proxy, port = parse_fc(value, os.getcwd())
            numbers = (port,)
        extras = tuple(_control_option(v) for o, v in options if o == "--option")
        controlfile.create(path, controlfile.Target(kind, numbers, proxy, extras))
    except getopt.GetoptError as err:
        raise UsageError(f"control-file: {err.msg}") from None
    except (ValueError, controlfile.ControlFileError) as err:
        raise UsageError(f"control-file {command}: {err}") from None
    return 0


def _control_option(text: str) -> tuple[int, int, bytes]:
    parts = text.split(":")
    try:
        level, name, value = (int(part, 0) for part in parts)
    except ValueError:
        raise ValueError(f"option {text!r}: expected LEVEL:NAME:INT (numbers)") from None
    if not (0 <= level < 2**32 and 0 <= name < 2**32 and -2**31 <= value < 2**31):
        raise ValueError(f"option {text!r}: a number is out of range")
    return level, name, value.to_bytes(4, "little", signed=True).ljust(32, b"\0")


BACKENDS = ("auto", "preload", "seccomp")


def choose_backend(program: str, wanted: str) -> tuple[str, str]:
    """The back end for program and why; UsageError when it serves the program not."""
    kind, why = classify(program)
    if kind == "none":
        raise UsageError(f"{program} {why}")
    if wanted == "preload" and why:
        raise UsageError(f"{program} {why} (--backend=preload)")
    if wanted == "seccomp":
        return "seccomp", "--backend=seccomp"
    if wanted == "auto" and kind == "seccomp":
        return "seccomp", f"{program} {why.split(';')[0] if why else ''}"
    return "preload", (f"{program} is dynamically linked and uses the C library's "
                       "socket calls" if wanted == "auto" else "--backend=preload")


def log_line(message: str) -> None:
    """An informational line as the library writes them: with the pid (the program's,
    after exec) and, when stderr is a socket (the journal), a syslog priority."""
    try:
        journal = stat.S_ISSOCK(os.fstat(2).st_mode)
    except OSError:
        journal = False
    sys.stderr.write(f"{'<6>' if journal else ''}unixify[{os.getpid()}]: {message}\n")


def seccomp_environment(encoded: bytes, rules: list[Rule], verbosity: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k != "UNIXIFY_INHERIT" and not k.startswith("UNIXIFY_INHERIT_")}
    env[ENV_RULES] = rules_variable(rules, encoded)
    env[ENV_VERBOSE] = str(1 + verbosity)
    return env


def run(argv: list[str]) -> int:
    if argv[:1] == ["explain"]:
        return run_explain(argv[1:])
    if argv[:1] == ["control-file"]:
        return run_control_file(argv[1:])
    if argv[:1] == ["env"]:
        return run_env(argv[1:])
    if argv[:1] == ["inetd"]:
        from unixify.inetd import main as inetd_main

        return inetd_main(argv[1:])
    if argv[:1] == ["dispatch"]:
        from unixify.dispatch import main as dispatch_main

        return dispatch_main(argv[1:])
    try:
        options, rest = getopt.getopt(
            argv, "r:f:cpvh",
            ["rule=", "file=", "check", "print", "verbose", "help", "version", "lib", "mode=",
             "backend="])
    except getopt.GetoptError as err:
        raise UsageError(f"{err.msg} (see 'unixify --help')") from None
    check = show = False
    verbosity = 0
    backend = "auto"
    for option, _value in options:
        if option in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        if option == "--version":
            sys.stdout.write(f"unixify {__version__}\n")
            return 0
        if option == "--lib":
            sys.stdout.write(library_path() + "\n")
            return 0
        if option in ("-c", "--check"):
            check = True
        elif option in ("-p", "--print"):
            show = True
        elif option in ("-v", "--verbose"):
            verbosity += 1
        elif option == "--backend":
            if _value not in BACKENDS:
                raise UsageError(f"--backend {_value!r}: expected one of "
                                 f"{', '.join(BACKENDS)}")
            backend = _value
    rules = rules_from_options(options)
    encoded = encode_checked(rules)  # -c and the launcher refuse alike
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
    chosen, reason = choose_backend(program, backend)
    if verbosity:
        log_line(f"back end {chosen}: {reason}")
    if chosen == "seccomp":
        target = supervisor_path()
        args = [target, program, *rest]
        env = seccomp_environment(encoded, rules, verbosity)
    else:
        target, args = program, rest
        env = build_environment(rules, encoded, verbosity)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(target, args, env)
    except OSError as exc:
        what = rest[0] if target == program else f"the seccomp supervisor {target}"
        fail(f"cannot run {what}: {exc.strerror}", 126)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except (RuleError, UsageError, LimitError) as err:
        fail(str(err))
    except ShimError as err:
        fail(str(err))
    except KeyboardInterrupt:
        return 130
