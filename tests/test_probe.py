"""The shim under a careful C program: flags, options, epoll, addresses, errno, fds."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    Processes,
    free_port,
    parse_kv,
    read_until,
    run_wrapped,
    tcp_port_open,
    unix_get,
    wait_for,
)


def run_probe(procs: Processes, probe: str, mode: str, host: str, port: int,
              rules: list[str]) -> subprocess.Popen[str]:
    return procs.wrapped(rules, [probe, mode, host, str(port)])


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_server_keeps_everything_set_before_conversion(procs: Processes, probe: str,
                                                       sockdir: Path, host: str) -> None:
    port = free_port()
    sock = sockdir / "srv.sock"
    proc = run_probe(procs, probe, "server", host, port, [f"in,port={port},path={sock}"])
    info = parse_kv(read_until(proc, "ready=1"))
    family = 10 if ":" in host else 2
    assert info["errno_after_bind"] == "4242"          # errno preserved on success
    assert info["sockname"] == f"{family},{host},{port},len={16 if family == 2 else 28}"
    assert info["short_sockname_len"].startswith("16,") or family == 10
    assert info["short_sockname_len"].endswith(f"family_bytes={family}")
    assert info["so_domain"] == str(family)
    assert info["v6only"] == ("1" if family == 10 else "-1")
    assert int(info["so_rcvbuf"]) == 2 * 65536         # carried over, not doubled twice
    assert info["so_reuseaddr"] == "1"
    assert info["nonblock"] == "1"
    assert info["cloexec"] == "1"
    assert info["setsockopt_nodelay"] == "0"           # TCP option accepted harmlessly
    assert info["getpeername_listener"] == "-1,ENOTCONN"
    assert info["epoll_mod"] == "0"                     # registration made before conversion
    assert sock.is_socket()                             # dup + close left it alone
    assert not tcp_port_open(port, host)

    assert unix_get(sock, b"") == b"hello\n"
    assert unix_get(sock, b"") == b"bye\n"
    out, err = proc.communicate(timeout=10)
    info.update(parse_kv(out))
    assert info["event_data"] == "12345"
    loop = "127.0.0.1" if family == 2 else "::1"
    peer_family, peer_host, peer_port, peer_len = info["peer1"].split(",")
    assert (peer_family, peer_host) == (str(family), loop)
    assert 32768 <= int(peer_port) <= 60999
    assert info["conn_sockname"] == f"{family},{host},{port},{peer_len}"
    assert info["accept4_short_len"] == f"{16 if family == 2 else 28},cloexec=1"
    assert info["epoll_del"] == "0"
    assert info["done"] == "1", err
    assert proc.returncode == 0, err
    assert not sock.exists()                            # removed when closed


def tcp_read(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=10) as c:
        return c.recv(100)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_mispredicted_socket_becomes_the_ip_socket_it_was(procs: Processes, probe: str,
                                                          sockdir: Path, host: str) -> None:
    # Every outgoing connection converts, so sockets start as Unix ones; this one binds
    # instead, no rule converts it, and it must end up a real TCP listener with all
    # that was set up on it.
    port = free_port()
    proc = run_probe(procs, probe, "server", host, port, [f"out,path={sockdir}/never"])
    info = parse_kv(read_until(proc, "ready=1"))
    family = 10 if ":" in host else 2
    assert info["sockname"].startswith(f"{family},{host},{port},")
    assert info["v6only"] == ("1" if family == 10 else "-1")   # replayed on the IP socket
    assert int(info["so_rcvbuf"]) >= 65536
    assert info["so_reuseaddr"] == "1"
    assert (info["nonblock"], info["cloexec"], info["epoll_mod"]) == ("1", "1", "0")
    assert tcp_port_open(port, host)
    assert tcp_read(host, port) == b"bye\n"    # the probe of tcp_port_open was the first
    out, err = proc.communicate(timeout=10)
    info.update(parse_kv(out))
    assert info["event_data"] == "12345"       # epoll registration carried over
    assert info["done"] == "1", err


# The first rule converts some connections: the IP socket is replaced at connect.  The
# second converts all of them: the socket is a Unix one from the start.
@pytest.mark.parametrize("rule", ["out,addr=192.0.2.0/24,port=4711,path={sock}",
                                  "out,path={sock}"])
def test_nonblocking_client(procs: Processes, probe: str, sockdir: Path, rule: str) -> None:
    sock = sockdir / "c.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock))
        listener.listen(1)
        proc = run_probe(procs, probe, "client", "192.0.2.7", 4711,
                         [rule.format(sock=sock)])
        conn, _ = listener.accept()
        conn.sendall(b"hi there\n")
        out, err = proc.communicate(timeout=10)
        conn.close()
    info = parse_kv(out)
    assert info["connect"] in ("0,0", "-1,EINPROGRESS"), err
    assert info.get("errno_after_connect", "4242") == "4242"
    assert info["so_error"] == "0"
    assert info["reconnect"] == "-1,EISCONN"
    assert info["peername"] == "2,192.0.2.7,4711,len=16"
    assert info["sockname"].startswith("2,127.0.0.1,")
    assert info["read"] == "hi there"


@pytest.mark.parametrize("setup", ["missing", "stale"])
def test_connect_to_missing_or_dead_socket_is_refused(procs: Processes, probe: str,
                                                       sockdir: Path, setup: str) -> None:
    sock = sockdir / "gone.sock"
    if setup == "stale":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(sock))
        s.close()  # the file stays, nobody listens
    out = run_wrapped([f"out,path={sock}"], [probe, "refused", "127.0.0.1", "9"]).stdout
    assert parse_kv(out)["connect"] == "-1,ECONNREFUSED"


def test_forked_child_closing_its_copy_keeps_the_socket(procs: Processes, probe: str,
                                                        sockdir: Path) -> None:
    port = free_port()
    sock = sockdir / "fork.sock"
    proc = run_probe(procs, probe, "forkserver", "127.0.0.1", port, [f"in,path={sock}"])
    read_until(proc, "ready=1")
    assert sock.is_socket(), "the child's close/exit removed the parent's socket"
    assert unix_get(sock, b"") == b"from parent\n"
    proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert not sock.exists()


def test_close_on_exec_follows_the_program(probe: str, sockdir: Path) -> None:
    port = free_port()
    out = run_wrapped([f"in,path={sockdir}/s-%p"],
                      [probe, "exec-check", "127.0.0.1", str(port)]).stdout
    info = parse_kv(out)
    assert info == {"keep_open": "1", "drop_open": "0"}, out


def test_fd_operations_keep_the_table_right(probe: str, sockdir: Path) -> None:
    sock = sockdir / "ops.sock"
    result = run_wrapped([f"in,path={sock}"],
                         [probe, "fdops", "127.0.0.1", str(free_port()), str(sock)])
    info = parse_kv(result.stdout)
    assert (info["owner_is_self"], info["sig"], info["async"]) == ("1", "10", "1"), result
    assert info["after_vfork_family"] == "2,exists=1"   # the child's close changed nothing
    assert info["after_spawn_family"] == "2,exists=1"
    assert info["after_close_original_family"] == "2,exists=1"  # the dup keeps it alive
    assert info["after_close_range_exists"] == "0"      # the last copy closed: file removed


def test_blackhole_listens_where_nobody_can_reach(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    script = (
        "import os, socket\n"
        f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\n"
        "print('sockname=%s:%d' % s.getsockname())\n"
        "print('listening=%d' % s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))\n"
        "print('ready=1', flush=True)\n"
        "input()\n")
    proc = procs.wrapped([f"in,port={port},blackhole"], ["python3", "-c", script],
                         stdin=subprocess.PIPE)
    info = parse_kv(read_until(proc, "ready=1"))
    assert info["sockname"] == f"127.0.0.1:{port}"
    assert info["listening"] == "1"
    assert not tcp_port_open(port)
    assert not any(Path("/tmp").glob("unixify-bh-*")), "blackhole left its directory"


RELOAD = '''\
import os, socket, sys
a = socket.socket(); a.bind(("127.0.0.1", int(sys.argv[1]))); a.listen()
r, w = os.pipe()
child = os.fork()
if child == 0:                      # a worker holding the listener...
    os.read(r, 1)
    os._exit(0)
a.close()                           # ...so closing it here leaves the file in place
os.write(w, b"x")
os.waitpid(child, 0)                # the worker is gone: so is the old socket
b = socket.socket(); b.bind(("127.0.0.1", int(sys.argv[1]))); b.listen()
print("ready=1", flush=True)
c, _ = b.accept(); c.sendall(b"new listener"); c.close()
'''


def test_rebinding_a_path_after_the_old_socket_died(procs: Processes, sockdir: Path) -> None:
    sock = sockdir / "reload.sock"
    proc = procs.wrapped([f"in,path={sock}"], ["python3", "-c", RELOAD, str(free_port())])
    read_until(proc, "ready=1")
    assert unix_get(sock, b"") == b"new listener"   # not blackholed as a duplicate
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert not sock.exists()


def test_noremove_keeps_the_file(sockdir: Path) -> None:
    sock = sockdir / "kept.sock"
    script = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()"
    assert run_wrapped([f"in,path={sock},noremove"], ["python3", "-c", script]).returncode == 0
    assert sock.is_socket()
    # without noremove the same program's exit removes it
    other = sockdir / "gone.sock"
    assert run_wrapped([f"in,path={other}"], ["python3", "-c", script]).returncode == 0
    assert not other.exists()


def test_static_program_is_refused_not_left_unconverted(probe_static: str,
                                                         sockdir: Path) -> None:
    """With the preload forced (auto runs it under seccomp: tests/test_seccomp.py)."""
    port = free_port()
    result = run_wrapped([f"in,path={sockdir}/s"],
                         [probe_static, "server", "127.0.0.1", str(port)],
                         backend="preload")
    assert result.returncode == 1
    assert "statically linked" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not tcp_port_open(port)


def test_live_socket_file_is_not_taken_over(procs: Processes, probe: str,
                                            sockdir: Path) -> None:
    sock = sockdir / "busy.sock"
    with socket.socket(socket.AF_UNIX) as owner:
        owner.bind(str(sock))
        owner.listen(1)
        result = run_wrapped([f"in,path={sock}"],
                             [probe, "server", "127.0.0.1", str(free_port())])
        assert "error=bind:Address already in use" in result.stdout
        assert "live socket" in result.stderr
        # still the original owner's socket
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(sock))
            conn, _ = owner.accept()
            conn.close()


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_live_socket_in_another_network_namespace_is_not_taken_over(
        procs: Processes, probe: str, sockdir: Path, netns: list[str], kind: int) -> None:
    """sock_diag sees only this namespace; the file itself still tells it is in use."""
    sock = sockdir / "elsewhere.sock"
    code = ("import socket,sys\n"
            f"s=socket.socket(socket.AF_UNIX,{kind}); s.bind({str(sock)!r})\n"
            f"{'s.listen(1); ' if kind == socket.SOCK_STREAM else ''}"
            "print('ready',flush=True); sys.stdin.readline()\n")
    owner = procs.start([*netns, sys.executable, "-c", code], stdin=subprocess.PIPE)
    read_until(owner, "ready")
    result = run_wrapped([f"in,path={sock}"], [probe, "server", "127.0.0.1", str(free_port())])
    assert "error=bind:Address already in use" in result.stdout
    assert "live socket" in result.stderr
    assert owner.poll() is None and sock.is_socket()


@pytest.mark.parametrize("listening", [True, False])
def test_liveness_probe_never_connects_to_a_server(procs: Processes, probe: str,
                                                   sockdir: Path, netns: list[str],
                                                   listening: bool) -> None:
    """A stream server in another namespace (sock_diag cannot see it), listening or
    between bind and listen, is live to the probe and never sees a connection from it."""
    sock = sockdir / "quiet.sock"
    code = ("import socket,sys\n"
            f"s=socket.socket(socket.AF_UNIX); s.bind({str(sock)!r})\n"
            f"{'s.listen(8); ' if listening else ''}"
            "print('ready',flush=True); sys.stdin.readline()\n"
            "s.listen(8); s.setblocking(False)\n"
            "try: s.accept(); print('connected')\n"
            "except BlockingIOError: print('no connection')\n")
    owner = procs.start([*netns, sys.executable, "-c", code], stdin=subprocess.PIPE)
    read_until(owner, "ready")
    result = run_wrapped([f"in,path={sock}"], [probe, "server", "127.0.0.1", str(free_port())])
    assert "error=bind:Address already in use" in result.stdout, result
    out, _ = owner.communicate("\n", timeout=10)
    assert out.split() == ["no", "connection"], (out, result)


def test_stale_socket_file_is_replaced(procs: Processes, probe: str, sockdir: Path) -> None:
    sock = sockdir / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    s.close()
    port = free_port()
    proc = run_probe(procs, probe, "server", "127.0.0.1", port, [f"in,path={sock}"])
    read_until(proc, "ready=1")
    assert unix_get(sock, b"") == b"hello\n"


def test_regular_file_at_path_is_never_replaced(probe: str, sockdir: Path) -> None:
    path = sockdir / "data.txt"
    path.write_text("precious")
    result = run_wrapped([f"in,path={path}"],
                         [probe, "server", "127.0.0.1", str(free_port())])
    assert "error=bind:Address already in use" in result.stdout
    assert path.read_text() == "precious"


def test_path_too_long_after_expansion(probe: str, sockdir: Path) -> None:
    long_dir = sockdir / ("d" * 90)
    long_dir.mkdir()
    result = run_wrapped([f"in,path={long_dir}/sock-%a-%p"],
                         [probe, "server", "::1", str(free_port())])
    assert "error=bind:File name too long" in result.stdout
    assert "too long" in result.stderr
    assert not any(long_dir.iterdir())


def test_reject_and_ignore(probe: str, sockdir: Path) -> None:
    port = free_port()
    result = run_wrapped([f"in,port={port},reject=EADDRNOTAVAIL"],
                         [probe, "server", "127.0.0.1", str(port)])
    assert "error=bind:Cannot assign requested address" in result.stdout
    result = run_wrapped(["out,port=9,ignore", f"out,path={sockdir}/x"],
                         [probe, "refused", "127.0.0.1", "9"], verbose=2)
    # ignored: a real TCP connect to the discard port on loopback, refused by the kernel
    assert parse_kv(result.stdout)["connect"] == "-1,ECONNREFUSED"
    assert "matches rule 1 (ignore)" in result.stderr  # first match wins


def test_dual_bind_to_same_path_blackholes_the_second(procs: Processes,
                                                      sockdir: Path) -> None:
    sock = sockdir / "dual.sock"
    port = free_port()
    script = (
        "import socket\n"
        f"a = socket.socket(socket.AF_INET); a.bind(('127.0.0.1', {port})); a.listen()\n"
        f"b = socket.socket(socket.AF_INET6); b.bind(('::1', {port})); b.listen()\n"
        "print('ready=1', flush=True)\n"
        "c, _ = a.accept(); c.sendall(b'v4'); c.close()\n"
    )
    proc = procs.wrapped([f"in,port={port},path={sock}"], ["python3", "-c", script])
    read_until(proc, "ready=1")
    assert unix_get(sock, b"") == b"v4"
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    wait_for(lambda: not sock.exists(), 5, "socket file removal")
