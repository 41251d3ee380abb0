"""OpenSSH's sshd behind a socket file: option answers and the program's own sandbox.

sshd drops every connection that carries IP options (it reads IP_OPTIONS), and its
pre-authentication child runs under a seccomp filter that kills the process on any
system call it does not allow itself: the shim's bookkeeping must make none there.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    HELPERS,
    Processes,
    compile_c,
    free_port,
    parse_kv,
    require_tool,
    run_wrapped,
    tcp_port_open,
    wait_for_socket,
)

TCP_LISTEN, TCP_ESTABLISHED = 10, 1


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_unset_options_answer_as_tcp(host: str, sockdir: Path) -> None:
    """Every IP-, IPv6- and TCP-level option the program never set answers as on a real
    TCP socket in the same state beside it; the ones it set answer what it set."""
    conv, real = free_port(), free_port()
    path = sockdir / "conv.sock"
    result = run_wrapped([f"in,port={conv},path={path}", f"out,port={conv},path={path}"],
                         [sys.executable, str(HELPERS / "sockopts.py"), host, str(conv),
                          str(real)])
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    for role in ("listener", "client", "accepted"):
        got, want = answers["conv"][role], answers["real"][role]
        # a loopback client's MSS depends on the kernel's option sizes; plausible is enough
        if role == "client":
            maxseg = int.from_bytes(bytes.fromhex(str(got.pop("TCP_MAXSEG"))), "little")
            assert 536 <= maxseg <= 65536
            want.pop("TCP_MAXSEG")
        assert int(got.pop("TCP_INFO.nonzero")) > 0
        want.pop("TCP_INFO.nonzero")
        assert got == want, role
    assert answers["conv"]["listener"]["TCP_INFO.state"] == TCP_LISTEN
    assert answers["conv"]["accepted"]["TCP_INFO.state"] == TCP_ESTABLISHED


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("sandboxed") / "sandboxed"
    return str(compile_c(HELPERS / "sandboxed.c", out, extra=[f"-I{HELPERS}"]))


@pytest.mark.parametrize("where", ["self", "syscall", "child"])
def test_sandboxed_program_survives(where: str, sandboxed: str, sockdir: Path) -> None:
    """A program that forbids itself socket() (AF_NETLINK included) with a seccomp filter
    that kills, then reads options of a converted listener, closes it and exits: our
    bookkeeping makes no such call.  Outside the sandbox the file still goes at the end."""
    port = free_port()
    path = sockdir / "s.sock"
    result = run_wrapped([f"in,port={port},path={path}"],
                         [sandboxed, "127.0.0.1", str(port), where])
    with socket.socket() as real:
        ttl = real.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert f"ip_options_len=0 ttl={ttl}" in result.stdout
    if where == "child":
        assert parse_kv(result.stdout)["child"] == "exited:0"
        assert "done" in result.stdout.splitlines()
        assert not path.exists()


def _ssh_keys(tmp: Path) -> tuple[Path, Path]:
    keygen = require_tool("ssh-keygen")
    host_key, user_key = tmp / "host_key", tmp / "user_key"
    for key in (host_key, user_key):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp / "authorized_keys").write_text((tmp / "user_key.pub").read_text())
    return host_key, user_key


@pytest.mark.parametrize("rexec", ["rexec", "no-rexec"])
def test_sshd_runs_command(rexec: str, procs: Processes, sockdir: Path,
                           tmp_path: Path) -> None:
    """sshd wrapped with an 'in' rule serves ssh through the socket file, including the
    pre-authentication child in its seccomp sandbox; no TCP port opens.  Without
    re-execution (-r) that child is a fork of the listening process and inherits its
    socket file's record."""
    sshd, ssh, socat = require_tool("sshd"), require_tool("ssh"), require_tool("socat")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation's chroot
    host_key, user_key = _ssh_keys(tmp_path)
    port = free_port()
    path = sockdir / "sshd.sock"
    config = tmp_path / "sshd_config"
    config.write_text(f"ListenAddress 127.0.0.1:{port}\nHostKey {host_key}\nUsePAM no\n"
                      f"AuthorizedKeysFile {tmp_path}/authorized_keys\nStrictModes no\n"
                      f"PidFile {tmp_path}/sshd.pid\nPermitRootLogin prohibit-password\n")
    server = procs.wrapped([f"in,port={port},path={path}"],
                           [sshd, "-f", str(config), "-D", "-e",
                            *(["-r"] if rexec == "no-rexec" else [])])
    wait_for_socket(path)
    client = subprocess.run(
        [ssh, "-F", "/dev/null", "-o", f"ProxyCommand={socat} - UNIX-CONNECT:{path}",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(user_key),
         "-l", "root", "localhost", "echo", "ran-over-unix"],
        capture_output=True, text=True, timeout=60)
    stderr = ""
    if client.returncode != 0:
        server.kill()
        stderr = server.communicate(timeout=10)[1]
    assert client.stdout.strip() == "ran-over-unix", (client.stderr, stderr)
    assert not tcp_port_open(port)
    assert server.poll() is None
