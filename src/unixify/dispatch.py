"""``unixify dispatch``: the dispatcher's command line."""

from __future__ import annotations

import getopt
import os
import sys

from unixify.dispatchconf import Config, ConfigErrors, format_config, parse_config

USAGE = """\
usage: unixify dispatch --check FILE
       unixify dispatch --from-socketbox FILE

Accept TCP connections on listeners and pass each accepted socket to the receiver
that owns its local address and port (routes in FILE, first match wins).

  --check FILE           validate FILE and print its table
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


def run_dispatch(argv: list[str]) -> int:
    try:
        options, rest = getopt.gnu_getopt(argv, "h", ["check", "from-socketbox", "help"])
    except getopt.GetoptError as err:
        raise DispatchUsage(f"{err.msg} (see 'unixify dispatch --help')") from None
    names = {option for option, _ in options}
    if names & {"-h", "--help"}:
        sys.stdout.write(USAGE)
        return 0
    if len(rest) != 1:
        raise DispatchUsage("expected one FILE (see 'unixify dispatch --help')")
    if {"--check", "--from-socketbox"} <= names:
        raise DispatchUsage("--check and --from-socketbox exclude each other")
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
    raise DispatchUsage("running the dispatcher is not built yet; --check and "
                        "--from-socketbox work")


def main(argv: list[str]) -> int:
    try:
        return run_dispatch(argv)
    except DispatchUsage as err:
        sys.stderr.write(f"unixify dispatch: {err}\n")
        return 1
