"""Other socket families: Firecracker-style multiplexers (against a local emulator),
unsock control files (round trips), and AF_VSOCK / AF_TIPC through their exact
addresses and error paths.  No real vsock or TIPC connection is ever made: vsock calls
run under strace with the connect/bind answered by strace itself."""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    HELPERS,
    Processes,
    free_port,
    preloaded_env,
    read_until,
    require_tool,
    run_wrapped,
    tcp_port_open,
    unixify_command,
)

from unixify import controlfile

EMULATOR = str(HELPERS / "fc_emulator.py")
FETCH = ("import socket,sys\n"
         "s=socket.create_connection(('127.0.0.1',int(sys.argv[1])),timeout=10)\n"
         "f=s.makefile('rwb'); print(f.readline().decode().strip())\n"
         "f.write(b'echo me\\n'); f.flush(); print(f.readline().decode().strip())\n")


@pytest.fixture
def emulator(procs: Processes, sockdir: Path) -> Path:
    path = sockdir / "fc.sock"
    proc = procs.start([sys.executable, EMULATOR, str(path), "5678", "1024"])
    read_until(proc, "ready")
    return path


def test_fc_rule_blocking_client(emulator: Path) -> None:
    port = free_port()
    result = run_wrapped([f"out,port={port},fc={emulator}:5678"],
                         [sys.executable, "-c", FETCH, str(port)])
    assert result.stdout.splitlines() == ["guest port 5678 says hi", "echo me"], result


def test_fc_rule_non_blocking_client(emulator: Path, probe: str) -> None:
    port = free_port()
    result = run_wrapped([f"out,port={port},fc={emulator}:1024"],
                         [probe, "client", "127.0.0.1", str(port)])
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert lines["connect"] in ("0,0", "-1,EINPROGRESS"), result
    assert lines["so_error"] == "0" and lines["reconnect"] == "-1,EISCONN"
    assert lines["peername"] == f"2,127.0.0.1,{port},len=16"
    assert lines["read"] == "guest port 1024 says hi", result


def test_fc_port_refused_by_multiplexer(emulator: Path, probe: str) -> None:
    port = free_port()
    result = run_wrapped([f"out,port={port},fc={emulator}:9999"],
                         [probe, "refused", "127.0.0.1", str(port)], verbose=1)
    assert "connect=-1,ECONNREFUSED" in result.stdout, result
    missing = run_wrapped([f"out,port={port},fc={emulator}.missing:1"],
                          [probe, "refused", "127.0.0.1", str(port)])
    assert "connect=-1,ECONNREFUSED" in missing.stdout, missing


def test_fc_bind_is_refused() -> None:
    code = ("import socket\ns=socket.socket()\n"
            "try: s.bind(('127.0.0.1',0))\nexcept OSError as e: print(e.errno)\n")
    result = run_wrapped(["fc=/tmp/x.sock:1"], [sys.executable, "-c", code])
    assert result.stdout.strip() == "22", result  # EINVAL
    assert "a multiplexer only connects" in result.stderr


def test_control_file_round_trip(sockdir: Path) -> None:
    targets = [controlfile.Target("vsock", (3, 5678)),
               controlfile.Target("vsock", (controlfile.VMADDR_CID_ANY, 80)),
               controlfile.Target("tipc", (2, 2, 128, 99, 0), None,
                                  ((1, 7, (65536).to_bytes(32, "little")),)),
               controlfile.Target("fc", (1024,), "/run/fc.sock")]
    for i, target in enumerate(targets):
        path = sockdir / f"{i}.sock"
        controlfile.create(str(path), target)
        assert path.stat().st_size == controlfile.SIZE
        assert controlfile.show(str(path)) == target
    with pytest.raises(controlfile.ControlFileError, match="exists; not overwriting"):
        controlfile.create(str(sockdir / "0.sock"), targets[1])


def test_control_file_command_line(sockdir: Path) -> None:
    command = [*unixify_command(), "control-file"]
    path = sockdir / "8000.sock"
    ok = subprocess.run([*command, "create", str(path), "--tipc", "2:2:128:99:0", "--option",
                         "1:7:65536"], capture_output=True, text=True)
    assert ok.returncode == 0, ok
    shown = subprocess.run([*command, "show", str(path)], capture_output=True, text=True)
    assert shown.stdout == (f"{path}: tipc addrtype 2 scope 2 values 128:99:0\n"
                            "  option level 1 name 7 value 65536\n"), shown
    for args, fragment in [
        (["create", str(path), "--vsock", "3:1"], "exists; not overwriting"),
        (["create", str(sockdir / "n"), "--vsock", "3"], "expected CID:PORT"),
        (["create", str(sockdir / "n"), "--tipc", "1:2:3"], "ADDRTYPE:SCOPE:TYPE:LOWER:UPPER"),
        (["create", str(sockdir / "n"), "--vsock", "1:2", "--fc", "/x:1"], "exactly one"),
        (["create", str(sockdir / "n"), "--vsock", "1:99999999999"], "not a number"),
        (["create", str(sockdir / "n"), "--vsock", "1:2", "--option", "x"], "LEVEL:NAME:INT"),
        (["show", "/etc/passwd"], "not a control file"),
        (["show", str(sockdir / "absent")], "cannot read"),
        (["frobnicate", "x"], "expected 'create FILE"),
    ]:
        bad = subprocess.run([*command, *args], capture_output=True, text=True)
        assert bad.returncode == 1 and fragment in bad.stderr, (args, bad)
        assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert not (sockdir / "n").exists()


def test_control_file_at_a_rule_path_reaches_the_multiplexer(emulator: Path,
                                                              sockdir: Path) -> None:
    port = free_port()
    controlfile.create(str(sockdir / f"{port}.sock"),
                       controlfile.Target("fc", (5678,), str(emulator)))
    result = run_wrapped([f"out,path={sockdir}/%p.sock"],
                         [sys.executable, "-c", FETCH, str(port)])
    assert result.stdout.splitlines() == ["guest port 5678 says hi", "echo me"], result


def test_malformed_control_file_is_a_clear_error(sockdir: Path, probe: str) -> None:
    port = free_port()
    path = sockdir / f"{port}.sock"
    data = bytearray(controlfile.encode(controlfile.Target("vsock", (3, 1))))
    data[24] = 9  # nine options cannot fit
    path.write_bytes(bytes(data))
    result = run_wrapped([f"out,path={sockdir}/%p.sock"],
                         [probe, "refused", "127.0.0.1", str(port)])
    assert "connect=-1,EINVAL" in result.stdout, result
    assert "not a valid unsock control file (bad lengths)" in result.stderr


def strace_vsock(args: list[str], when: str = ""
                 ) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run args with connect/bind answered by strace (never reaching the kernel's vsock
    transport), from the when-th call on; return the result and strace's AF_VSOCK lines."""
    strace = require_tool("strace")
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"ufy-strace-{os.getpid()}.log"
    result = subprocess.run([strace, "-f", "-qq", "-o", str(log), "-e", "trace=connect,bind",
                             "-e", f"inject=connect,bind:error=ENETUNREACH{when}", *args],
                            capture_output=True, text=True, timeout=30)
    lines = [line for line in log.read_text().splitlines() if "AF_VSOCK" in line]
    log.unlink()
    return result, "\n".join(lines)


def test_vsock_connect_uses_the_exact_address(probe: str) -> None:
    port = free_port()
    result, calls = strace_vsock([*unixify_command(), "-r", f"out,port={port},vsock=3:5678",
                                  probe, "refused", "127.0.0.1", str(port)])
    assert re.search(r"connect\(\d+, \{sa_family=AF_VSOCK, svm_cid=0x3, svm_port=0x162e, "
                     r"svm_flags=0\}, 16\) = -1 ENETUNREACH .*\(INJECTED\)", calls), calls
    assert "connect=-1,ENETUNREACH" in result.stdout, result


def test_vsock_bind_and_control_file_use_the_exact_address(sockdir: Path) -> None:
    code = ("import socket\ns=socket.socket()\n"
            "try: s.bind(('127.0.0.1',7777))\nexcept OSError as e: print(e.errno)\n")
    _, calls = strace_vsock([*unixify_command(), "-r", "in,vsock=any:5678",
                             sys.executable, "-c", code])
    assert re.search(r"bind\(\d+, \{sa_family=AF_VSOCK, svm_cid=VMADDR_CID_ANY, "
                     r"svm_port=0x162e, svm_flags=0\}, 16\)", calls), calls
    controlfile.create(str(sockdir / "7777.sock"), controlfile.Target("vsock", (2, 4242)))
    # the first bind is the Unix one that finds the control file; the vsock one follows
    result, calls = strace_vsock([*unixify_command(), "-r", f"in,path={sockdir}/%p.sock",
                                  sys.executable, "-c", code], when=":when=2+")
    assert re.search(r"bind\(\d+, \{sa_family=AF_VSOCK, svm_cid=VMADDR_CID_HOST, "
                     r"svm_port=0x1092, svm_flags=0\}, 16\)", calls), calls
    assert result.stdout.strip() == "101", result  # ENETUNREACH, from strace


def test_tipc_without_the_module_fails_clearly(probe: str) -> None:
    try:
        socket.socket(getattr(socket, "AF_TIPC", 30), socket.SOCK_STREAM).close()
        pytest.skip("TIPC is available here; the test needs it absent")
    except OSError:
        pass
    port = free_port()
    result = run_wrapped([f"out,port={port},tipc=2:2:128:99:0"],
                         [probe, "refused", "127.0.0.1", str(port)])
    assert "connect=-1,EAFNOSUPPORT" in result.stdout, result
    assert "cannot make a socket for tipc addrtype 2 scope 2 128:99:0" in result.stderr


# A control file as an attacker would write it: unsock's layout with an IPv4 destination.
BIND_AND_REPORT = (
    "import socket,sys\ns=socket.socket()\n"
    "try: s.bind(('127.0.0.1',int(sys.argv[1]))); s.listen(); print('bound')\n"
    "except OSError as e: print(e.errno)\n"
    "q=':%04X'%int(sys.argv[2])\n"
    "rows=[l.split() for f in ('/proc/net/tcp','/proc/net/tcp6') for l in open(f)][1:]\n"
    "print('tcp listening', any(r[1].endswith(q) and r[3]=='0A' for r in rows if len(r)>3))\n")


def inet_control_file(path: Path, port: int, owner: int = 0, mode: int = 0o644,
                      host: str = "127.0.0.1") -> None:
    dest = struct.pack("<HH4s", socket.AF_INET, 0, socket.inet_aton(host))
    dest = dest[:2] + port.to_bytes(2, "big") + dest[4:]
    data = controlfile.HEADER.pack(controlfile.MAGIC, 0, 0, 16, 0, 0)
    data += bytes(128) + dest.ljust(128, b"\0")
    path.write_bytes(data.ljust(controlfile.SIZE, b"\0"))
    os.chown(path, owner, owner)
    path.chmod(mode)


@pytest.mark.parametrize("owner,mode,why", [
    (0, 0o644, "names address family 2"),          # root's own file, but an IP address
    (65534, 0o644, "owned by uid 65534"),          # another user's file
    (0, 0o664, "with mode 0664 is not trusted"),   # root's, but others may write it
])
def test_control_file_cannot_open_a_tcp_listener(sockdir: Path, owner: int, mode: int,
                                                 why: str) -> None:
    """A user who can put a file where a root-run rule's socket goes must not get a TCP
    port of their choosing: the bind fails with EACCES and no port listens."""
    port, attacker_port = free_port(), free_port()
    inet_control_file(sockdir / "app.sock", attacker_port, owner, mode, "0.0.0.0")
    for rule in [f"in,path={sockdir}/app.sock,mode=0600", f"in,path={sockdir}/app.sock"]:
        result = run_wrapped([rule], [sys.executable, "-c", BIND_AND_REPORT, str(port),
                                      str(attacker_port)])
        assert result.stdout.splitlines() == ["13", "tcp listening False"], (rule, result)
        assert why in result.stderr and "refusing" in result.stderr, result
        assert not tcp_port_open(attacker_port)


def test_unsock_dir_control_file_cannot_open_a_tcp_listener(sockdir: Path) -> None:
    port, attacker_port = free_port(), free_port()
    inet_control_file(sockdir / f"{port}.sock", attacker_port, 65534)
    env = preloaded_env(UNSOCK_DIR=str(sockdir), UNSOCK_ADDR="127.0.0.1")
    result = subprocess.run([sys.executable, "-c", BIND_AND_REPORT, str(port),
                             str(attacker_port)],
                            capture_output=True, text=True, timeout=20, env=env)
    assert result.stdout.splitlines() == ["13", "tcp listening False"], result
    assert "owned by uid 65534" in result.stderr, result


@pytest.mark.parametrize("owner,mode", [(0, 0o644), (65534, 0o600), (0, 0o646)])
def test_control_file_cannot_send_a_connect_to_tcp(sockdir: Path, probe: str, owner: int,
                                                   mode: int) -> None:
    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.3)
        inet_control_file(sockdir / f"{port}.sock", listener.getsockname()[1], owner, mode)
        result = run_wrapped([f"out,path={sockdir}/%p.sock"],
                             [probe, "refused", "127.0.0.1", str(port)])
        assert "connect=-1,EACCES" in result.stdout, result
        assert "refusing" in result.stderr, result
        with pytest.raises(TimeoutError):
            listener.accept()[0].close()


def test_control_file_of_another_user_is_refused_for_any_family(sockdir: Path,
                                                                probe: str) -> None:
    port = free_port()
    path = sockdir / f"{port}.sock"
    controlfile.create(str(path), controlfile.Target("fc", (1,), str(sockdir / "fc.sock")))
    os.chown(path, 65534, 65534)
    result = run_wrapped([f"out,path={sockdir}/%p.sock"],
                         [probe, "refused", "127.0.0.1", str(port)])
    assert "connect=-1,EACCES" in result.stdout, result
    assert "owned by uid 65534" in result.stderr, result
