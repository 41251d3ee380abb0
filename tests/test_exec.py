"""Converted sockets across exec: the new image sees the IP sockets the old one had."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import (
    Processes,
    free_port,
    preloaded_env,
    read_until,
    require_tool,
    run_wrapped,
    unix_get,
    wait_for,
    wait_for_socket,
)

# The new image: takes the listener by number, reports what it sees, serves one client.
AFTER_EXEC = textwrap.dedent("""\
    import os, socket, sys
    s = socket.socket(fileno=int(sys.argv[1]))
    print("family", s.family.name, "name", s.getsockname(), flush=True)
    print("inherit_var", os.environ.get("UNIXIFY_INHERIT"), flush=True)
    print("ready", flush=True)
    c, peer = s.accept()
    c.sendall(f"{c.family.name} {c.getsockname()[0]} {peer[0]}\\n".encode())
    c.close()
""")

BEFORE_EXEC = textwrap.dedent("""\
    import os, socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4)
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)   # close-on-exec: not passed
    closed.bind(("127.0.0.1", int(sys.argv[2]))); closed.listen(1)
    s.set_inheritable(True)
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[3], str(s.fileno())])
""")


def test_server_that_execs_keeps_its_ip_listener(procs: Processes, sockdir: Path) -> None:
    port, other = free_port(), free_port()
    sock = sockdir / "app.sock"
    server = procs.wrapped([f"in,port={port},path={sock}", f"in,port={other},path={sock}.x"],
                           [sys.executable, "-c", BEFORE_EXEC, str(port), str(other),
                            AFTER_EXEC])
    text = read_until(server, "ready")
    assert f"family AF_INET name ('127.0.0.1', {port})" in text
    assert "inherit_var None" in text          # taken out of the environment
    wait_for_socket(sock)
    assert unix_get(sock, b"") == b"AF_INET 127.0.0.1 127.0.0.1\n"
    server.communicate(timeout=20)
    assert server.returncode == 0
    # the image that exited after exec owned the file and removed it
    wait_for(lambda: not sock.exists(), 10, "socket file removal after exec")
    assert not Path(f"{sock}.x").exists()


def test_inetd_style_child_sees_its_ip_peer(procs: Processes, sockdir: Path,
                                           tmp_path: Path) -> None:
    """socat accepts and execs a program on the connection (fork, dup2, execvp)."""
    socat = require_tool("socat")
    port = free_port()
    sock = sockdir / "inetd.sock"
    child = tmp_path / "child.py"
    child.write_text("import socket\nc = socket.socket(fileno=0)\n"
                     "print(c.family.name, c.getpeername()[0], c.getsockname(), flush=True)\n")
    procs.wrapped([f"in,port={port},path={sock}"],
                  [socat, f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                   f"EXEC:{sys.executable} {child},nofork"])
    wait_for_socket(sock)
    for _ in range(2):
        reply = unix_get(sock, b"").decode()
        assert reply == f"AF_INET 127.0.0.1 ('127.0.0.1', {port})\n", reply


def test_exec_family_and_spawn_all_pass_the_socket(probe: str, sockdir: Path) -> None:
    """execl, execlp, execle, execv, execvp, execvpe, execve, fexecve, posix_spawn and
    posix_spawnp each hand the converted listener to a new image that sees it as IP."""
    report = f"{sys.executable} -c \"import socket; " \
             "print(socket.socket(fileno=3).getsockname())\""
    port = free_port()
    result = run_wrapped([f"in,port={port},path={sockdir}/e.sock"],
                         [probe, "exec-all", "127.0.0.1", str(port), report], timeout=60)
    lines = result.stdout.splitlines()
    expected = ["execl", "execlp", "execle", "execv", "execvp", "execvpe", "execve",
                "fexecve", "posix_spawn", "posix_spawnp"]
    assert [line.split(" ", 1)[0] for line in lines] == expected, result
    for line in lines:
        assert line.split(" ", 1)[1] == f"('127.0.0.1', {port})", result


def test_malformed_inherit_variable_is_one_warning(sockdir: Path) -> None:
    env = preloaded_env(UNIXIFY_RULES="UFY1", UNIXIFY_INHERIT="3,12,1,1,2,0,zz;")
    result = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get("
                             "'UNIXIFY_INHERIT'))"], env=env, capture_output=True,
                            text=True, timeout=20)
    assert result.returncode == 0 and result.stdout == "None\n"
    assert result.stderr.count("\n") == 1 and "UNIXIFY_INHERIT is malformed" in result.stderr


# A forged UNIXIFY_INHERIT: what the library must not believe.

def file_item(path: Path, sock_ino: int = 123456789) -> str:
    st = os.lstat(path)
    return f"f,{sock_ino},0,{st.st_dev},{st.st_ino},{bytes(path).hex()};"


def run_forged(inherit: str, code: str = "pass",
               stdin: int | None = None) -> subprocess.CompletedProcess[str]:
    env = preloaded_env(UNIXIFY_RULES="UFY1", UNIXIFY_INHERIT=inherit)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=20, stdin=stdin)


def test_forged_file_item_does_not_remove_a_regular_file(tmp_path: Path) -> None:
    victim = tmp_path / "important.txt"
    victim.write_text("keep me")
    result = run_forged(file_item(victim))
    assert victim.read_text() == "keep me"
    assert result.returncode == 0 and result.stderr.count("\n") == 1, result.stderr
    assert "UNIXIFY_INHERIT: ignored 1 item" in result.stderr


def test_forged_file_item_spares_symlinks_and_live_sockets(sockdir: Path) -> None:
    live = sockdir / "live.sock"
    link = sockdir / "link"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(live))
        listener.listen(1)
        link.symlink_to(live)
        # the live file, claimed for a made-up socket and for its real one
        real_ino = os.fstat(listener.fileno()).st_ino
        result = run_forged(file_item(link) + file_item(live) + file_item(live, real_ino))
        assert result.returncode == 0, result.stderr
        assert link.is_symlink() and live.exists()
        assert live.is_socket()


def test_forged_socket_item_does_not_relabel_a_plain_unix_socket() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ino = os.fstat(ours.fileno()).st_ino
        addr = (socket.AF_INET.to_bytes(2, "little") + (80).to_bytes(2, "big")
                + bytes([1, 2, 3, 4])).ljust(28, b"\0").hex()
        for role in range(4):
            item = f"s,0,{ino},{socket.SOCK_STREAM},{role},{socket.AF_INET},{addr},{addr};"
            result = run_forged(item, "import socket; s = socket.socket(fileno=0); "
                                "print(s.family.name, s.getpeername())", stdin=ours.fileno())
            assert result.stdout == "AF_UNIX \n", (role, result.stdout, result.stderr)
            assert "ignored 1 item" in result.stderr


def test_launcher_clears_a_stale_inherit_variable(tmp_path: Path) -> None:
    victim = tmp_path / "important.txt"
    victim.write_text("keep me")
    env = {**os.environ, "UNIXIFY_INHERIT": file_item(victim),
           "UNIXIFY_INHERIT_1": file_item(victim)}
    result = run_wrapped(["in,port=1,path=/tmp/nowhere.sock"],
                         [sys.executable, "-c", "pass"], env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert victim.read_text() == "keep me"
