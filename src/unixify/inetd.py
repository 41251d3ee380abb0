"""``unixify inetd``: one program per connection a dispatcher passes, socket on stdin and
stdout, with the UCSPI variables (as tcpserver sets them).

The receiving is the shim's (receive.c): ``unixify inetd`` checks its arguments, then
runs itself again (``python -m unixify.inetd``) with the shim preloaded and one rule,
``in,tcp,addr=::1,port=1,receive=PATH[,slot=N][,mode=..,owner=..,group=..]``.  That
process binds, listens and accepts as any TCP server does: the shim makes its listener
the receiver (the socket file's handling, protocol B's registration and re-registration
are the shim's) and accept() gives the passed TCP sockets with their real peers, skipping
anything else passed.  The children run plain: the environment of the first process,
without the shim.  At ``--max-children`` nothing more is accepted, so connections wait
queued and the dispatcher's backpressure applies.  SIGTERM or SIGINT: stop accepting and
exit 0 (running children go on); closing the listener removes the receiver file.
"""

from __future__ import annotations

import getopt
import ipaddress
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from unixify.cli import build_environment
from unixify.encoding import LimitError, encode_checked
from unixify.rules import (
    Rule,
    RuleError,
    escape_value,
    parse_group,
    parse_mode,
    parse_owner,
    parse_rule,
)
from unixify.shim import ShimError, library_path

USAGE = ("usage: unixify inetd [--max-children N] [--mode OCTAL] [--owner USER] "
         "[--group GROUP] --receive PATH [--slot N] -- PROGRAM [ARGS...]\n")
# The listener the served process binds: the rule makes it the receiver, so this port
# never opens (and the served process refuses to bind without the shim).
ADDRESS, PORT = "::1", 1
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class InetdUsage(Exception):
    """Bad arguments; the message is a complete line."""


@dataclass
class Options:
    path: str
    rule: Rule
    max_children: int
    program: list[str]


def receive_rule(path: str, values: dict[str, str]) -> Rule:
    """The rule that makes the served process's listener the receiver, checked as the
    rule language checks --mode/--owner/--group and slot=."""
    literal = escape_value(path.replace("%", "%%"))  # a path, not a template
    text = f"in,tcp,addr={ADDRESS},port={PORT},receive={literal}"
    for key, check in (("--slot", None), ("--mode", parse_mode), ("--owner", parse_owner),
                       ("--group", parse_group)):
        if key not in values:
            continue
        if check is not None:
            try:
                check(values[key])
            except ValueError as err:
                raise InetdUsage(f"inetd: {key}: {err}") from None
        text += f",{key[2:]}={escape_value(values[key])}"
    try:
        return parse_rule(text, os.getcwd())
    except RuleError as err:
        raise InetdUsage(f"inetd: {err.message} (from --receive {path!r}"
                         + "".join(f" {k} {values[k]!r}" for k in
                                   ("--slot", "--mode", "--owner", "--group") if k in values)
                         + ")") from None


def parse(argv: list[str]) -> Options:
    try:
        options, rest = getopt.getopt(argv, "", ["max-children=", "receive=", "slot=",
                                                 "mode=", "owner=", "group="])
    except getopt.GetoptError as err:
        raise InetdUsage(f"inetd: {err.msg}") from None
    values = dict(options)
    if "--receive" not in values:
        raise InetdUsage("inetd: --receive PATH is required")
    for key, low in (("--max-children", 1), ("--slot", 0)):
        text = values.get(key)
        if text is not None and (not text.isascii() or not text.isdigit()
                                 or not low <= int(text) < 2**32):
            raise InetdUsage(f"inetd: {key} {text!r} is not a number from {low} to "
                             "4294967295")
    rule = receive_rule(values["--receive"], values)
    if not rest:
        raise InetdUsage("inetd: no program to run")
    return Options(values["--receive"], rule, int(values.get("--max-children", "64")), rest)


def log(message: str) -> None:
    sys.stderr.write(f"unixify inetd[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def ucspi(conn: socket.socket) -> dict[str, str]:
    """TCPREMOTEIP/PORT and TCPLOCALIP/PORT; IPv4-mapped written as plain IPv4."""
    env = {"PROTO": "TCP"}
    for prefix, address in (("TCPREMOTE", conn.getpeername()), ("TCPLOCAL", conn.getsockname())):
        ip = ipaddress.ip_address(address[0].split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        env[prefix + "IP"] = str(ip)
        env[prefix + "PORT"] = str(address[1])
    return env


def plain_environment() -> dict[str, str]:
    """This process's environment as it was before the launcher preloaded the shim
    (cli.build_environment): no UNIXIFY_* variable, the caller's own LD_PRELOAD only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIXIFY_")}
    preload = env.pop("LD_PRELOAD", "")
    library = library_path()
    rest = preload[len(library):] if preload.startswith(library) else preload
    if rest.strip():
        env["LD_PRELOAD"] = rest.strip()
    return env


def shim_loaded() -> bool:
    """Is the shim mapped in this process?  Without it the bind would open a real port."""
    try:
        ours = os.path.realpath(library_path().split()[-1])
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any(line.rstrip("\n").endswith(" " + ours) for line in maps)
    except (OSError, ShimError, IndexError):
        return False


class Server:
    def __init__(self, options: Options, listener: socket.socket) -> None:
        self.options = options
        self.listener = listener
        self.env = plain_environment()
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def reap(self) -> None:
        for pid, child in list(self.children.items()):
            if child.poll() is not None:
                del self.children[pid]

    def spawn(self, conn: socket.socket) -> None:
        try:
            child = subprocess.Popen(self.options.program, stdin=conn.fileno(),
                                     stdout=conn.fileno(), env={**self.env, **ucspi(conn)})
            self.children[child.pid] = child
        except OSError as err:
            log(f"cannot run {self.options.program[0]}: {err.strerror or err}")
        except ValueError as err:
            log(f"connection closed: {err}")
        finally:
            conn.close()

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            self.reap()

    def serve(self) -> int:
        while not self.stopping:
            self.reap()
            if len(self.children) >= self.options.max_children:
                self.wait(0.05)  # at the cap: leave connections queued in the receiver
                continue
            ready, _, _ = select.select([self.listener], [], [], 0.2)
            if not ready or self.stopping:
                continue
            try:
                taken, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                continue  # nothing usable was queued (the shim skipped it), or a retry
            except OSError as err:
                log(f"accept: {err.strerror or err}")
                self.wait(1.0)
                continue
            # as the socket it is (accept() labels it with the listener's family)
            self.spawn(socket.socket(fileno=taken.detach()))
        return 0

    def stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True


def serve(argv: list[str]) -> int:
    """The loop, in the process started under the shim."""
    options = parse(argv)
    if not shim_loaded():
        sys.stderr.write("unixify: inetd: the shim is not loaded in the receiving process; "
                         "refusing to bind\n")
        return 1
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server = Server(options, listener)
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGINT, server.stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by main()
    try:
        listener.bind((ADDRESS, PORT))
        listener.listen()
        listener.setblocking(False)
    except OSError as err:
        sys.stderr.write(f"unixify: inetd: {options.path}: {err.strerror or err}\n")
        listener.close()
        return 1
    with listener:  # closing it removes the receiver file (the shim's)
        return server.serve()


def main(argv: list[str]) -> int:
    """Check the arguments, then run the loop under the shim (serve)."""
    if argv[:1] in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return 0
    try:
        options = parse(argv)
        env = build_environment([options.rule], encode_checked([options.rule]), 0)
    except InetdUsage as err:
        sys.stderr.write(f"unixify: {err}\n")
        return 2
    except (ShimError, LimitError) as err:
        sys.stderr.write(f"unixify: inetd: {err}\n")
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    # held until serve() has its handlers: a stop meanwhile must not leave the file
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        os.execve(sys.executable, [sys.executable, "-m", "unixify.inetd", *argv], env)
    except OSError as err:
        sys.stderr.write(f"unixify: inetd: cannot run {sys.executable}: {err.strerror}\n")
    return 1


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
