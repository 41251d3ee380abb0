"""``unixify dispatch``: the dispatcher's command line."""

from __future__ import annotations

import getopt
import os
import sys

from unixify.dispatchconf import Config, ConfigErrors, format_config, parse_config

USAGE = """\
usage: unixify dispatch [-v] FILE
       unixify dispatch --check FILE
       unixify dispatch --status FILE
       unixify dispatch --from-socketbox FILE

Accept TCP connections on listeners and pass each accepted socket to the receiver
that owns its local address and port (routes in FILE, first match wins).

  (no option)            run: in the foreground, SIGHUP reloads FILE, SIGTERM/SIGINT
                         stop accepting, pass on what waits and exit 0
  -v, --verbose          log more (registrations, reloads)
  --check FILE           validate FILE and print its table
  --status FILE          print the live counters of the dispatcher running FILE
                         (through its control socket)
  --from-socketbox FILE  print the configuration equivalent to a socketbox daemon's
                         FILE; what has no equivalent is named in a '#' line and on
                         stderr
  -h, --help             show this help and exit

FILE: one entry per line, '#' comments, options comma-separated ('\\,' escapes):
  listen,addr=ADDRESS,port=PORT[,transparent][,freebind][,reuseport][,backlog=N]
        [,netns=PATH]                 listen,systemd[=FDNAME]
  control,path=PATH[,mode=OCTAL][,owner=USER][,group=GROUP]
  allow,slot=N,uid=USER[,gid=GROUP][,max=N]
  drop,user=USER[,group=GROUP]
  route (any other line): [addr=CIDR][,port=PORT[-PORT]][,from=CIDR]
        [,from-port=PORT[-PORT]], then send=PATH[,owner=USER] (%a local address,
        %p local port), slot=N or reject; [,queue=N] with send= and slot=
"""


class DispatchUsage(Exception):
    """Bad command line or unreadable file; the message is complete."""


def read_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise DispatchUsage(f"cannot read {what} {path!r}: {reason}") from None


def load(path: str) -> Config:
    return parse_config(read_file(path, "configuration"), path, os.getcwd())


def status(path: str) -> int:
    import socket

    try:
        config = load(path)
    except ConfigErrors as err:
        for error in err.errors:
            sys.stderr.write(f"unixify dispatch: {error}\n")
        return 1
    if config.control is None:
        raise DispatchUsage(f"{path} has no control line; --status asks the running "
                            "dispatcher through its control socket")
    chunks = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(30)
        try:
            sock.connect(config.control.path)
            sock.send(b"status")
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError as err:
            raise DispatchUsage(f"cannot ask the dispatcher at {config.control.path}: "
                                f"{err.strerror or err}") from None
    sys.stdout.write(b"".join(chunks).decode(errors="replace"))
    return 0


def run_dispatch(argv: list[str]) -> int:
    try:
        options, rest = getopt.gnu_getopt(argv, "hv", ["check", "from-socketbox", "help",
                                                      "status", "verbose"])
    except getopt.GetoptError as err:
        raise DispatchUsage(f"{err.msg} (see 'unixify dispatch --help')") from None
    names = {option for option, _ in options}
    if names & {"-h", "--help"}:
        sys.stdout.write(USAGE)
        return 0
    if len(rest) != 1:
        raise DispatchUsage("expected one FILE (see 'unixify dispatch --help')")
    modes = names & {"--check", "--from-socketbox", "--status"}
    if len(modes) > 1:
        raise DispatchUsage(" and ".join(sorted(modes)) + " exclude each other")
    if "--from-socketbox" in names:
        from unixify.socketbox import SocketboxError, convert

        try:
            text, notes = convert(read_file(rest[0], "socketbox configuration"), rest[0])
        except SocketboxError as err:
            raise DispatchUsage(str(err)) from None
        sys.stdout.write(text)
        for note in notes:
            sys.stderr.write(f"unixify dispatch: {note}\n")
        return 0
    if "--check" in names:
        try:
            sys.stdout.write(format_config(load(rest[0])))
        except ConfigErrors as err:
            for error in err.errors:
                sys.stderr.write(f"unixify dispatch: {error}\n")
            return 1
        return 0
    if "--status" in names:
        return status(rest[0])
    from unixify.dispatchd import serve

    verbose = sum(1 for option, _ in options if option in ("-v", "--verbose"))
    serve(rest[0], verbose, load)


def main(argv: list[str]) -> int:
    try:
        return run_dispatch(argv)
    except DispatchUsage as err:
        sys.stderr.write(f"unixify dispatch: {err}\n")
        return 1
