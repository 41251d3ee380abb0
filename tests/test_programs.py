"""Real programs, wrapped: python's http.server, curl, nc, nginx, redis, and servers that
thread and fork."""

from __future__ import annotations

import concurrent.futures
import os
import random
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import (
    Processes,
    free_port,
    preloaded_env,
    read_until,
    require_tool,
    run_wrapped,
    tcp_port_open,
    unix_get,
    unixify_command,
    wait_for,
    wait_for_socket,
)


def http_get(sock: Path, path: str = "/") -> bytes:
    return unix_get(sock, f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())


@pytest.fixture
def webroot(tmp_path: Path) -> Path:
    (tmp_path / "hello.txt").write_text("hello from the wrapped server\n")
    return tmp_path


def start_http_server(procs: Processes, sock: Path, webroot: Path, port: int,
                      extra: list[str] | None = None) -> subprocess.Popen[str]:
    proc = procs.wrapped([f"in,path={sock}"],
                         [sys.executable, "-m", "http.server", str(port), "--bind",
                          "127.0.0.1", *(extra or [])], cwd=str(webroot))
    wait_for_socket(sock)
    return proc


def test_http_server_and_curl(procs: Processes, sockdir: Path, webroot: Path) -> None:
    curl = require_tool("curl")
    port = free_port()
    sock = sockdir / "web.sock"
    proc = start_http_server(procs, sock, webroot, port)
    out = subprocess.run([curl, "-sS", "--unix-socket", str(sock), "http://x/hello.txt"],
                         capture_output=True, text=True, timeout=10)
    assert out.stdout == "hello from the wrapped server\n", out.stderr
    assert not tcp_port_open(port), "the wrapped server opened its TCP port"
    ss = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
    assert ss.stdout.strip() == ""
    proc.send_signal(2)  # Ctrl-C: http.server exits normally, the file goes
    _, err = proc.communicate(timeout=10)
    assert '"GET /hello.txt HTTP/1.1" 200' in err
    assert "127.0.0.1 - -" in err   # clients look local
    assert not sock.exists()


@pytest.mark.no_asan  # curl deadlocks in setlocale with libasan preloaded, shim or not
def test_wrapped_curl_client(procs: Processes, sockdir: Path, webroot: Path) -> None:
    curl = require_tool("curl")
    sock = sockdir / "web.sock"
    start_http_server(procs, sock, webroot, free_port())
    # curl believes it talks to 1.2.3.4 over TCP
    out = run_wrapped([f"out,path={sock}"], [curl, "-sS", "http://1.2.3.4/hello.txt"])
    assert out.stdout == "hello from the wrapped server\n", out.stderr


FASTOPEN_CLIENT = """
import socket, sys
request = b"GET /hello.txt HTTP/1.0\\r\\n\\r\\n"
for how in ("sendto", "sendmsg"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if how == "sendto":
        s.sendto(request, socket.MSG_FASTOPEN, ("127.0.0.1", int(sys.argv[1])))
    else:
        s.sendmsg([request], [], socket.MSG_FASTOPEN, ("127.0.0.1", int(sys.argv[1])))
    print(how, s.family.name, s.getpeername()[0], s.makefile("rb").read().split(b"\\r\\n")[-1])
"""


@pytest.mark.no_asan  # curl deadlocks in setlocale with libasan preloaded, shim or not
def test_tcp_fast_open_clients(procs: Processes, sockdir: Path, webroot: Path) -> None:
    """TCP Fast Open both ways: curl sets TCP_FASTOPEN_CONNECT and connects; python's
    sendto/sendmsg with MSG_FASTOPEN connect and send in one call.  Converted, the
    connect goes to the rule's path and the data follows on the Unix stream."""
    curl = require_tool("curl")
    port = free_port()
    sock = sockdir / "web.sock"
    start_http_server(procs, sock, webroot, free_port())
    out = run_wrapped([f"out,port={port},path={sock}"],
                      [curl, "-sS", "--tcp-fastopen", f"http://127.0.0.1:{port}/hello.txt"])
    assert out.stdout == "hello from the wrapped server\n", out.stderr
    out = run_wrapped([f"out,port={port},path={sock}"],
                      [sys.executable, "-c", FASTOPEN_CLIENT, str(port)])
    assert out.stdout.splitlines() == [
        f"{how} AF_INET 127.0.0.1 b'hello from the wrapped server\\n'"
        for how in ("sendto", "sendmsg")], out.stderr


def test_nc_listen_and_connect(procs: Processes, sockdir: Path) -> None:
    nc = require_tool("nc")
    sock = sockdir / "nc.sock"
    port = free_port()
    listener = procs.wrapped([f"in,path={sock}"], [nc, "-l", "127.0.0.1", str(port)],
                             stdin=subprocess.DEVNULL)
    wait_for_socket(sock)
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(str(sock))
        c.sendall(b"through nc\n")
    out, _ = listener.communicate(timeout=10)
    assert out == "through nc\n"

    # nc as a client of a plain Unix listener
    sock2 = sockdir / "srv.sock"
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(str(sock2))
        srv.listen(1)
        client = procs.wrapped([f"out,port=7000,path={sock2}"],
                               [nc, "-N", "127.0.0.1", "7000"], stdin=subprocess.PIPE)
        assert client.stdin is not None
        client.stdin.write("from nc\n")
        client.stdin.close()
        conn, _ = srv.accept()
        conn.settimeout(10)
        data = b""
        while not data.endswith(b"\n"):
            data += conn.recv(100)
        conn.close()
    assert data == b"from nc\n"
    client.wait(timeout=10)


def nginx_config(root: Path, listen: str, body: str) -> Path:
    for sub in ("logs", "tmp"):
        (root / sub).mkdir(exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        user root;
        worker_processes 2;
        pid {root}/nginx.pid;
        error_log stderr info;
        events {{ worker_connections 256; }}
        http {{
            access_log {root}/logs/access.log;
            client_body_temp_path {root}/tmp/body;
            proxy_temp_path {root}/tmp/proxy;
            fastcgi_temp_path {root}/tmp/fastcgi;
            uwsgi_temp_path {root}/tmp/uwsgi;
            scgi_temp_path {root}/tmp/scgi;
            server {{
                listen {listen};
                {body}
            }}
        }}
        """))
    return conf


def test_nginx_proxies_to_wrapped_server(procs: Processes, sockdir: Path, webroot: Path,
                                         tmp_path: Path) -> None:
    nginx = require_tool("nginx")
    curl = require_tool("curl")
    sock = sockdir / "app.sock"
    start_http_server(procs, sock, webroot, free_port())
    front = free_port()
    conf = nginx_config(tmp_path, f"127.0.0.1:{front}",
                        f"location / {{ proxy_pass http://unix:{sock}:; }}")
    procs.start([nginx, "-c", str(conf), "-g", "daemon off;"])
    wait_for(lambda: tcp_port_open(front), 10, "nginx")
    out = subprocess.run([curl, "-sS", f"http://127.0.0.1:{front}/hello.txt"],
                         capture_output=True, text=True, timeout=10)
    assert out.stdout == "hello from the wrapped server\n", out.stderr


def test_wrapped_nginx_serves_on_a_unix_socket(procs: Processes, sockdir: Path,
                                               tmp_path: Path) -> None:
    nginx = require_tool("nginx")
    sock = sockdir / "nginx.sock"
    port = free_port()
    conf = nginx_config(tmp_path, f"127.0.0.1:{port}",
                        'location / { return 200 "addr=$remote_addr server=$server_port\\n"; }')
    proc = procs.wrapped([f"in,port={port},path={sock}"],
                         [nginx, "-c", str(conf), "-g", "daemon off;"])
    wait_for_socket(sock)
    assert not tcp_port_open(port)
    for _ in range(20):  # both workers get some of them
        reply = http_get(sock)
        assert reply.startswith(b"HTTP/1.1 200"), reply
        assert reply.endswith(f"addr=127.0.0.1 server={port}\n".encode())
    os.killpg(proc.pid, 3)  # SIGQUIT: graceful shutdown, the master closes last
    proc.communicate(timeout=15)
    wait_for(lambda: not sock.exists(), 10, "nginx socket file removal")


def test_wrapped_redis(procs: Processes, sockdir: Path, tmp_path: Path) -> None:
    redis_server = require_tool("redis-server")
    redis_cli = require_tool("redis-cli")
    sock = sockdir / "redis.sock"
    port = free_port()
    procs.wrapped([f"in,port={port},path={sock}"],
                  [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(tmp_path)])
    wait_for_socket(sock)
    assert not tcp_port_open(port)

    def cli(*args: str) -> str:
        return subprocess.run([redis_cli, "-s", str(sock), *args], capture_output=True,
                              text=True, timeout=10).stdout.strip()

    assert cli("ping") == "PONG"
    assert cli("set", "k", "v") == "OK"
    assert cli("get", "k") == "v"
    assert f"127.0.0.1:{port}" in cli("client", "list").split("laddr=")[1]
    # and the wrapped client: redis-cli thinks it talks TCP
    out = run_wrapped([f"out,port={port},path={sock}"],
                      [redis_cli, "-p", str(port), "get", "k"])
    assert out.stdout.strip() == "v", out.stderr


def test_threaded_server_under_50_concurrent_clients(procs: Processes, sockdir: Path,
                                                     webroot: Path) -> None:
    sock = sockdir / "threads.sock"
    start_http_server(procs, sock, webroot, free_port())  # ThreadingHTTPServer
    errors: list[str] = []
    barrier = threading.Barrier(50)

    def client(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(4):
                reply = http_get(sock, "/hello.txt")
                if not reply.endswith(b"hello from the wrapped server\n"):
                    errors.append(f"client {n}: {reply[:80]!r}")
        except Exception as exc:  # any failure is a test failure, reported below
            errors.append(f"client {n}: {exc!r}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []


FORKING_SERVER = textwrap.dedent("""\
    import os, socket, sys
    port = int(sys.argv[1])
    srv = socket.socket(socket.AF_INET6)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::1", port))
    srv.listen(8)
    print("ready=1", flush=True)
    for _ in range(5):
        conn, peer = srv.accept()
        if os.fork() == 0:
            srv.close()              # the child closes its copy of the listener...
            conn.sendall(f"child {os.getpid()} peer {peer[0]}\\n".encode())
            conn.close()
            sys.exit(0)              # ...and exits normally
        conn.close()
        os.wait()
    print("done=1", flush=True)
""")


def test_forking_server_children_do_not_remove_the_socket(procs: Processes,
                                                          sockdir: Path) -> None:
    sock = sockdir / "fork.sock"
    proc = procs.wrapped([f"in,path={sock}"], [sys.executable, "-c", FORKING_SERVER,
                                               str(free_port())])
    read_until(proc, "ready=1")
    for _ in range(5):
        reply = unix_get(sock, b"")
        assert reply.startswith(b"child ") and reply.endswith(b" peer ::1\n"), reply
        wait_for(lambda: len(os.listdir(f"/proc/{proc.pid}/task")) >= 1, 1)
        assert sock.is_socket()
    out, err = proc.communicate(timeout=10)
    assert "done=1" in out, err
    assert not sock.exists()


def test_abstract_sockets_both_ways(procs: Processes) -> None:
    port = free_port()
    name = f"unixify-test-{os.getpid()}-{port}"
    script = textwrap.dedent(f"""\
        import socket
        s = socket.socket(); s.bind(("127.0.0.1", {port})); s.listen()
        print("ready=1", flush=True)
        c, peer = s.accept(); c.sendall(f"hi {{peer[0]}}".encode()); c.close()
        """)
    proc = procs.wrapped([f"in,abstract=unixify-test-{os.getpid()}-%p"],
                         [sys.executable, "-c", script])
    read_until(proc, "ready=1")
    assert unix_get("\0" + name, b"") == b"hi 127.0.0.1"
    proc.wait(timeout=10)

    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind("\0" + name)
        srv.listen()
        client = procs.wrapped([f"out,abstract={name}"], [
            sys.executable, "-c",
            "import socket; c = socket.create_connection(('10.9.8.7', 1)); "
            "print(c.getpeername(), c.recv(10).decode())"])
        conn, _ = srv.accept()
        conn.sendall(b"over")
        conn.close()
        out, err = client.communicate(timeout=10)
    assert out == "('10.9.8.7', 1) over\n", err


def test_log_lines_use_syslog_format_when_stderr_is_a_socket(sockdir: Path) -> None:
    parent, child = socket.socketpair()
    sock = sockdir / "log.sock"
    script = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()")
    subprocess.run([*unixify_command(), "-v", "-r", f"in,path={sock}", sys.executable,
                    "-c", script], stderr=child.fileno(), timeout=10, check=True)
    child.close()
    parent.settimeout(5)
    text = parent.recv(65536).decode()
    parent.close()
    assert text.startswith("<6>unixify["), text
    assert f"listening on {sock}" in text

    result = run_wrapped([f"in,path={sock}"], [sys.executable, "-c", script], verbose=1)
    assert result.stderr.startswith("unixify[")
    assert f": fd 3: listening on {sock}\n" in result.stderr


@pytest.mark.parametrize("encoding", [
    "UFY1{A1:P",                        # truncated
    "UFY1{A1:PT5:/tmp}",                # length runs past the value
    "UFY2{A1:I}",                       # unknown version
    "UFY1{A1:Pd1:x}",                   # bad direction, no target
    "UFY1{A1:Rz1:1}",                   # unknown key
    "UFY1{A1:Re5:99999}",               # errno out of range
    "UFY1{A1:Ia7:zz/8}",                # bad address
    "UFY1{A1:Ip3:9-1}",                 # reversed ports
    "UFY1{A99999999999:I}",             # absurd length
    "UFY1{A1:PT9:rel/path}",            # path must be absolute
    "garbage",
])
def test_corrupted_encoding_refuses_ip_sockets_without_crashing(probe: str,
                                                                 encoding: str) -> None:
    env = preloaded_env(UNIXIFY_RULES=encoding)
    result = subprocess.run([probe, "refused", "127.0.0.1", "9"], env=env,
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "connect=-1,EACCES\n"
    assert result.stderr.count("\n") == 1
    assert "UNIXIFY_RULES is malformed" in result.stderr


# Rules of every shape the shim decodes, except vsock (a mutated one would reach the
# hypervisor); mutations keep 'V' out so no rule can become one.
FUZZ_RULES = [
    "in,tcp,addr=127.0.0.1,port=7000-7010,path={d}/%a-%p.sock,mode=600",
    "out,udp,addr=127.0.0.0/8,path={d}/u%p",
    "in,ipv6,port=53,abstract=dns-%p",
    "in,udp,path={d}/keep.sock,noremove",
    "out,tcp,reject=ECONNREFUSED",
    "in,blackhole",
    "ipv4,ignore",
    "in,systemd=web",
    "from-unix={d}/**/*.sock,path={d}/x.sock",
    "from-abstract=a?[bc],abstract=z",
    "out,fc={d}/fc.sock:52",
    "out,tipc=1:2:3:4:5",
    "in,owner=0,group=0,path={d}/o.sock",
]


def mutate(text: str, rng: random.Random) -> str:
    alphabet = "0123456789:{}ABIPRSTadefmnoptu/%-.,\x00\xff"
    i = rng.randrange(len(text) + 1)
    j = min(len(text), i + rng.randrange(1, 6))
    choice = rng.randrange(5)
    if choice == 0:
        return text[:i]                                      # truncated
    if choice == 1:
        return text[:i] + text[j:]                           # bytes dropped
    if choice == 2:
        return text[:i] + text[i:j] * 2 + text[j:]           # bytes repeated
    if choice == 3:
        return text[:i] + rng.choice(alphabet) + text[i + 1:]
    k = rng.randrange(len(text) + 1)
    return text[:i] + text[k:k + 8] + text[i:]               # a piece moved


def well_formed_nonsense(d: Path, rng: random.Random) -> str:
    """Fields with correct lengths but values and combinations the parser never makes."""
    values = {
        "A": "PARBISCF", "d": "io?", "t": "sd?", "f": "46?",
        "a": ["7f000001/8", "00000000000000000000000000000001/128", "7f000001/33",
              "7f0001/8", "zz/1", "/", "7f000001/"],
        "p": ["0-65535", "80-80", "9-1", "70000-1", "-", "1-", "4294967297-5"],
        "T": [f"{d}/%a-%p", f"{d}/" + "x" * 200, "%" * 60, "", "rel", f"{d}/%%%z",
              f"{d}:1", f"{d}/fc.sock"],
        "v": ["1:2:3:4:5", "52", "::", "4294967296", "1:2"],
        "e": ["13", "0", "-1", "4096", "x"],
        "n": ["1", "0", ""], "N": ["web", "", "x" * 300],
        "u": ["**", "[", "\\", "*" * 100], "b": ["a?", "[!", ""],
        "m": ["600", "7777", "9", "17777", ""], "o": ["0", "4294967295", "-5"],
        "g": ["0", "65534", "x"],
    }
    fields = []
    keys = ["A", *rng.sample(sorted(set(values) - {"A"}), rng.randrange(0, 7))]
    for key in keys:
        # mostly the sound first value, so that one odd value at a time gets through
        value = rng.choice(values[key]) if rng.random() < 0.3 else values[key][0]
        fields.append(f"{key}{len(value.encode())}:{value}")
    return "{" + "".join(fields) + "}"


def test_encodings_never_crash_the_program(probe: str, sockdir: Path) -> None:
    """The shim must survive any UNIXIFY_RULES: a clean refusal or a valid rule set,
    never a signal, a sanitizer report, or a hang."""
    from unixify.encoding import MAGIC, encode_rules
    from unixify.rules import parse_rule
    rules = [parse_rule(text.format(d=sockdir)) for text in FUZZ_RULES]
    rng = random.Random(20261123)
    cases = []
    for _ in range(200):
        encoded = encode_rules(rng.sample(rules, rng.randrange(1, 4)))
        for _ in range(rng.randrange(1, 4)):
            encoded = mutate(encoded, rng)
        cases.append(encoded)
    for _ in range(200):
        cases.append(MAGIC + "".join(well_formed_nonsense(sockdir, rng)
                                     for _ in range(rng.randrange(1, 4))))
    assert not any("V" in case for case in cases)

    def run(encoded: str) -> tuple[str, subprocess.CompletedProcess[bytes]]:
        raw = encoded.encode("latin-1").replace(b"\0", b"")   # \xff stays one byte
        env = preloaded_env(UNIXIFY_RULES=os.fsdecode(raw))
        return encoded, subprocess.run([probe, "setup", "127.0.0.1", "7003"], env=env,
                                       capture_output=True, timeout=20, cwd=sockdir)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for encoded, result in pool.map(run, cases):
            lines = result.stdout.decode().splitlines()
            assert result.returncode == 0 and len(lines) == 6, (encoded, result)
            assert b"Sanitizer" not in result.stderr and b"runtime error" not in result.stderr
