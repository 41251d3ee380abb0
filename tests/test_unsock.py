"""Environment-only mode: unsock's variables with LD_PRELOAD=$(unixify --lib), and
`unixify env` for people who set the environment themselves."""

from __future__ import annotations

import shlex
import socket
import stat
import subprocess
import sys
from pathlib import Path

from conftest import (
    HELPERS,
    Processes,
    free_port,
    preloaded_env,
    read_until,
    require_tool,
    unix_get,
    unixify_command,
    wait_for_socket,
)

from unixify.shim import library_path


def run(args: list[str], env: dict[str, str], **kwargs: object
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True,  # type: ignore
                          timeout=20, **kwargs)


def test_lib_prints_the_installed_library() -> None:
    out = subprocess.run([*unixify_command(), "--lib"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == library_path()
    assert all(Path(part).is_file() for part in out.stdout.split())


def test_nc_listen_and_connect_as_in_unsocks_readme(procs: Processes, sockdir: Path) -> None:
    nc = require_tool("nc")
    env = preloaded_env(UNSOCK_DIR=f"{sockdir}/")
    server = procs.start([nc, "-l", "127.175.0.0", "7000"], env=env)
    wait_for_socket(sockdir / "7000.sock")
    client = run([nc, "-N", "127.175.0.0", "7000"], env, input="hello unsock users\n")
    assert client.returncode == 0, client
    out, _ = server.communicate(timeout=10)
    assert out == "hello unsock users\n"


def test_addr_range_port_and_reported_peer(procs: Processes, sockdir: Path) -> None:
    """UNSOCK_ADDR=a/0 converts every IPv4 address; clients are reported from a;
    UNSOCK_PORT limits conversion to one port and is the reported peer port."""
    server_code = ("import socket\ns=socket.socket(); s.bind(('0.0.0.0',8123)); s.listen()\n"
                   "print('ready',flush=True)\nc,a=s.accept(); print(a[0],a[1],flush=True)\n")
    env = preloaded_env(UNSOCK_DIR=str(sockdir), UNSOCK_ADDR="127.175.0.3/0", UNSOCK_PORT="8123")
    server = procs.start([sys.executable, "-c", server_code], env=env)
    read_until(server, "ready")
    wait_for_socket(sockdir / "8123.sock")
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(str(sockdir / "8123.sock"))
        out, _ = server.communicate(timeout=10)
    assert out.splitlines()[-1] == "127.175.0.3 8123"
    # Another port is not converted: a real TCP connection (refused on loopback).
    probe = ("import socket,sys\ns=socket.socket()\n"
             "print(s.connect_ex(('127.175.0.1',int(sys.argv[1]))))\n")
    port = free_port()
    other = run([sys.executable, "-c", probe, str(port)],
                {**env, "UNSOCK_ADDR": "127.175.0.0/16", "UNSOCK_PORT": "1"})
    assert other.stdout.strip() == "111", other  # ECONNREFUSED from the kernel's TCP
    assert not (sockdir / f"{port}.sock").exists()


def test_mode_block_inet_and_block_inet6(sockdir: Path) -> None:
    code = ("import socket\n"
            "try: socket.socket(socket.AF_INET6); print('inet6 ok')\n"
            "except OSError as e: print('inet6', e.errno)\n"
            "s=socket.socket(); s.bind(('127.175.0.0',9001)); s.listen()\n"
            "import os; d=os.environ['UNSOCK_DIR']\n"
            "print(oct(os.stat(d+'/9001.sock').st_mode & 0o777))\n"
            "t=socket.socket()\n"
            "print('inet', t.connect_ex(('127.0.0.1',9)))\n")
    env = preloaded_env(UNSOCK_DIR=str(sockdir), UNSOCK_MODE="660", UNSOCK_BLOCK_INET="1",
                     UNSOCK_BLOCK_INET6="1")
    result = run([sys.executable, "-c", code], env)
    assert result.stdout.splitlines() == ["inet6 97", "0o660", "inet 13"], result


def test_bad_unsock_variables_refuse_ip_sockets_with_one_line(sockdir: Path) -> None:
    code = "import socket\nprint(socket.socket().connect_ex(('127.175.0.0',1)))\n"
    for name, value, fragment in [("UNSOCK_DIR", "relative/dir", "not an absolute path"),
                                  ("UNSOCK_ADDR", "1.2.3", "not an IPv4 address"),
                                  ("UNSOCK_PORT", "70000", "not a port number"),
                                  ("UNSOCK_MODE", "9", "not an octal file mode")]:
        env = preloaded_env(**{"UNSOCK_DIR": str(sockdir), name: value})
        result = run([sys.executable, "-S", "-c", code], env)
        assert result.stdout.strip() == "13", (name, result)  # EACCES
        assert f"{name}={value}: {fragment}" in result.stderr, result


def test_unixify_rules_take_precedence(sockdir: Path) -> None:
    code = "import socket\ns=socket.socket(); s.bind(('127.175.0.0',9002)); print('bound')\n"
    env = preloaded_env(UNSOCK_DIR=str(sockdir))
    printed = subprocess.run([*unixify_command(), "env", "-r", f"in,path={sockdir}/mine.sock"],
                             capture_output=True, text=True, check=True).stdout
    for line in printed.splitlines():
        name, value = line.split("=", 1)
        env[name] = shlex.split(value)[0]
    result = run([sys.executable, "-c", code + "import os; print(sorted(os.listdir("
                  f"{str(sockdir)!r})))\n"], env)
    assert result.stdout.splitlines() == ["bound", "['mine.sock']"], result


def test_http_server_in_env_only_mode(procs: Processes, sockdir: Path, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("served without the launcher\n")
    env = preloaded_env(UNSOCK_DIR=str(sockdir), UNSOCK_MODE="600")
    procs.start([sys.executable, "-m", "http.server", "-d", str(tmp_path), "--bind",
                 "127.175.0.0", "8111"], env=env)
    wait_for_socket(sockdir / "8111.sock")
    assert stat.S_IMODE((sockdir / "8111.sock").stat().st_mode) == 0o600
    reply = unix_get(sockdir / "8111.sock", b"GET /index.html HTTP/1.0\r\n\r\n")
    assert reply.endswith(b"served without the launcher\n")


def test_env_command_output_is_usable_by_a_shell(sockdir: Path) -> None:
    out = subprocess.run([*unixify_command(), "env", "--mode", "0640", "-r",
                          f"in,path={sockdir}/with space.sock"],
                         capture_output=True, text=True, check=True).stdout
    script = ("set -a; eval \"$1\"; set +a; exec python3 -c \"import socket,os,sys; "
              "s=socket.socket(); s.bind(('127.0.0.1',0)); "
              "print(oct(os.stat(sys.argv[1]).st_mode & 0o777))\" \"$2\"")
    result = subprocess.run(["sh", "-c", script, "sh", out, str(sockdir / "with space.sock")],
                            capture_output=True, text=True, timeout=20)
    assert result.stdout.strip() == "0o640", result
    bad = subprocess.run([*unixify_command(), "env", "-r", "in,path=/x", "extra"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "takes rules only" in bad.stderr


def test_control_file_in_unsock_dir(procs: Processes, sockdir: Path) -> None:
    from unixify import controlfile

    emulator = sockdir / "fc.sock"
    proc = procs.start([sys.executable, str(HELPERS / "fc_emulator.py"), str(emulator), "77"])
    read_until(proc, "ready")
    controlfile.create(str(sockdir / "7300.sock"), controlfile.Target("fc", (77,), str(emulator)))
    code = ("import socket\ns=socket.create_connection(('127.175.0.0',7300),timeout=10)\n"
            "print(s.makefile().readline().strip())\n")
    result = run([sys.executable, "-c", code], preloaded_env(UNSOCK_DIR=str(sockdir)))
    assert result.stdout.strip() == "guest port 77 says hi", result
