"""Fail closed: a socket a rule claims never becomes an IP listener or sender, even when
its conversion failed or the program never bound it; and a listener's file goes when
its socket really does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import (
    Processes,
    free_port,
    parse_kv,
    preloaded_env,
    read_until,
    require_tool,
    run_wrapped,
    tcp_port_open,
    unix_get,
    unixify_command,
)


def ip_sockets(pid: int) -> list[str]:
    """The lines of /proc/net/{tcp,tcp6,udp,udp6} about sockets pid holds: any socket
    there has an IP port (unbound IP sockets are not listed)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                if line.split()[9] in inodes:
                    found.append(f"{table}: {line.strip()}")
    return found


@contextmanager
def ip_peers(port: int) -> Iterator[None]:
    """A real TCP listener and UDP socket on 127.0.0.1:port, so that a connect or sendto
    that wrongly goes out over IP succeeds."""
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", port))
        tcp.listen(8)
        udp.bind(("127.0.0.1", port))
        yield


def held_probe(proc: subprocess.Popen[str]) -> tuple[dict[str, str], list[str]]:
    """What a probe that waits on stdin reported, and its IP sockets while it waits."""
    info = parse_kv(read_until(proc, "ready=1"))
    sockets = ip_sockets(proc.pid)
    out, err = proc.communicate("\n", timeout=10)
    assert proc.returncode == 0, (out, err)
    return info, sockets


def start_held(procs: Processes, args: list[str], **kwargs: object) -> subprocess.Popen[str]:
    return procs.start(args, stdin=subprocess.PIPE, **kwargs)


ERROR_CLASSES = ["too-long", "no-directory", "read-only-directory", "owner-not-allowed",
                 "live-file", "malformed-encoding"]


@pytest.mark.parametrize("case", ERROR_CLASSES)
def test_failed_bind_conversion_opens_no_ip_port(procs: Processes, probe: str,
                                                 sockdir: Path, case: str) -> None:
    # The program ignores bind's error and goes on: listen, connect, sendto, and listen
    # on another socket it never bound.  Each would make the kernel bind an IP port.
    setpriv = [require_tool("setpriv")]
    prefix: list[str] = []
    env = None
    live = None
    expected = {"too-long": "ENAMETOOLONG", "no-directory": "ENOENT",
                "read-only-directory": "EACCES", "owner-not-allowed": "EPERM",
                "live-file": "EADDRINUSE", "malformed-encoding": "EACCES"}[case]
    rule = f"in,path={sockdir}/s.sock"
    if case == "too-long":
        rule = f"in,path={sockdir}/{'x' * 100}%p.sock"
    elif case == "no-directory":
        rule = f"in,path={sockdir}/missing/s.sock"
    elif case == "read-only-directory":
        sockdir.chmod(0o555)
        prefix = [*setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    elif case == "owner-not-allowed":
        rule += ",owner=nobody"
        prefix = [*setpriv, "--bounding-set=-chown"]
    elif case == "live-file":
        live = socket.socket(socket.AF_UNIX)
        live.bind(str(sockdir / "s.sock"))
        live.listen(1)
    port = free_port()
    command = [probe, "claimed", "127.0.0.1", str(port)]
    if case == "malformed-encoding":
        env = preloaded_env(UNIXIFY_RULES="UFY1 this is not an encoding")
    else:
        command = [*unixify_command(), "-r", rule, "--", *command]
    with ip_peers(port):
        proc = start_held(procs, [*prefix, *command], env=env)
        info, sockets = held_probe(proc)
    if live:
        live.close()
    for call in ("bind", "listen", "bind_client", "connect_after_bind", "listen_nobind",
                 "dgram_bind", "sendto_after_bind"):
        assert info[call] == expected, (call, info)
    assert sockets == []
    assert not tcp_port_open(port)  # nothing but our own peers was ever there
    if case == "live-file":
        assert (sockdir / "s.sock").is_socket()


@pytest.mark.parametrize("rule", ["out,port={port},path={d}/none.sock",
                                  "out,path={d}/none.sock"])  # the second predicts
def test_failed_connect_conversion_opens_no_ip_port(procs: Processes, probe: str,
                                                    sockdir: Path, rule: str) -> None:
    port = free_port()
    with ip_peers(port):
        proc = procs.wrapped([rule.format(port=port, d=sockdir)],
                             [probe, "outfail", "127.0.0.1", str(port)],
                             stdin=subprocess.PIPE)
        info, sockets = held_probe(proc)
    assert info["connect"] == "ECONNREFUSED"
    assert info["listen_after_connect"] == "ECONNREFUSED"
    assert info["reconnect"] == "ECONNREFUSED"  # decided again, and refused again
    assert sockets == []


LISTEN_NO_BIND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.listen(4)
print("sockname=%s,%d" % s.getsockname())
print("ready=1", flush=True)
conn, _ = s.accept()
conn.sendall(b"hello\\n")
conn.close()
sys.stdin.readline()
"""


@pytest.mark.parametrize("extra", [[], ["out,path={d}/elsewhere.sock"]])  # plain, pending
def test_listen_without_bind_follows_the_in_rule(procs: Processes, sockdir: Path,
                                                 extra: list[str]) -> None:
    sock = sockdir / "s.sock"
    rules = [f"in,path={sock}", *(r.format(d=sockdir) for r in extra)]
    proc = procs.wrapped(rules, [sys.executable, "-c", LISTEN_NO_BIND],
                         stdin=subprocess.PIPE)
    info = parse_kv(read_until(proc, "ready=1"))
    assert info["sockname"].startswith("0.0.0.0,"), info
    assert sock.is_socket()
    assert ip_sockets(proc.pid) == []
    assert unix_get(sock, b"") == b"hello\n"
    proc.communicate("\n", timeout=10)
    assert proc.returncode == 0


@pytest.mark.parametrize("rule", ["in,port=1,path={d}/s.sock", "in,ignore"])
def test_listen_without_bind_unclaimed_stays_ip(procs: Processes, sockdir: Path,
                                                rule: str) -> None:
    # No rule claims an ephemeral port here: the program's own TCP listener is left alone.
    proc = procs.wrapped([rule.format(d=sockdir)], [sys.executable, "-c", LISTEN_NO_BIND],
                         stdin=subprocess.PIPE)
    info = parse_kv(read_until(proc, "ready=1"))
    port = int(info["sockname"].rsplit(",", 1)[1])
    assert port != 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        assert c.recv(100) == b"hello\n"
    proc.communicate("\n", timeout=10)
    assert proc.returncode == 0
    assert list(sockdir.iterdir()) == []


@pytest.mark.parametrize("rule", ["in,reject=EADDRNOTAVAIL", "in,blackhole"])
def test_listen_without_bind_rejected_or_blackholed(sockdir: Path, rule: str) -> None:
    code = ("import os, socket\ns = socket.socket()\n"
            "try: s.listen(4); print('listen=0')\n"
            "except OSError as e: print('listen=%d' % e.errno)\n"
            "print('tcp=' + ','.join(l.split()[9] for t in ('tcp', 'tcp6')"
            " for l in open('/proc/self/net/' + t).readlines()[1:]"
            " if l.split()[9] == os.readlink('/proc/self/fd/%d' % s.fileno())[8:-1]))\n")
    result = run_wrapped([rule], [sys.executable, "-c", code])
    info = parse_kv(result.stdout)
    assert info["listen"] == ("99" if "reject" in rule else "0"), result  # EADDRNOTAVAIL
    assert info["tcp"] == "", result  # no TCP port, listening or not


RETRY = """
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as e:
    print("first=%d" % e.errno)
s.bind(("127.0.0.1", 0))
s.listen(4)
print("port=%d" % s.getsockname()[1])
print("ready=1", flush=True)
conn, _ = s.accept()
conn.sendall(b"hello\\n")
conn.close()
"""


def test_bind_retried_where_no_rule_claims_is_the_programs(procs: Processes,
                                                           sockdir: Path) -> None:
    # Our choice: a new bind names an address, and the rules decide about it afresh.
    claimed = free_port()
    proc = procs.wrapped([f"in,port={claimed},path={sockdir}/missing/s.sock"],
                         [sys.executable, "-c", RETRY, str(claimed)])
    info = parse_kv(read_until(proc, "ready=1"))
    assert info["first"] == "2"  # ENOENT
    with socket.create_connection(("127.0.0.1", int(info["port"])), timeout=10) as c:
        assert c.recv(100) == b"hello\n"
    proc.communicate(timeout=10)
    assert proc.returncode == 0


@pytest.mark.parametrize("how", ["connect", "signal"])
def test_listener_closed_under_a_blocked_accept_loses_its_file(probe: str, sockdir: Path,
                                                               how: str) -> None:
    sock = sockdir / "s.sock"
    port = free_port()
    result = run_wrapped([f"in,path={sock}"],
                         [probe, "acceptclose", "127.0.0.1", str(port), str(sock), how],
                         timeout=20)
    info = parse_kv(result.stdout)
    assert info["blocked"] == "1", result
    assert info["after_close_exists"] == "1"  # the blocked accept still holds the socket
    assert info["accept_result"] == ("0" if how == "connect" else "EINTR"), result
    assert info["after_accept_exists"] == "0", result  # gone while the process runs
    assert result.returncode == 0, result
