"""The dispatcher between network namespaces the test makes: clients in one, the
dispatcher in another (joined by a veth pair), servers in a third that has only
loopback.  TPROXY (nftables) with one dual-stack listener, AnyIP, and `netns=`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Processes, require_tool, unixify_command, wait_for
from dispatchkit import RECEIVER, dispatcher, receiver, start, stop
from test_receive import nginx_config


class Namespaces:
    def __init__(self, ip: str) -> None:
        self.ip = ip
        tag = os.getpid()
        self.client, self.dispatch, self.server = (f"ufy-{k}{tag}" for k in "cds")

    def run(self, ns: str, *args: str) -> str:
        result = subprocess.run([self.ip, "netns", "exec", ns, *args], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0, f"{args}: {result.stderr}"
        return result.stdout

    def prefix(self, ns: str) -> list[str]:
        return [self.ip, "netns", "exec", ns]

    def ask(self, host: str, port: int) -> str:
        """From the client namespace: connect and read the answer (or 'refused')."""
        code = ("import socket,sys\n"
                "h,p=sys.argv[1],int(sys.argv[2])\n"
                "f=socket.AF_INET6 if ':' in h else socket.AF_INET\n"
                "s=socket.socket(f);s.settimeout(10)\n"
                "d=b''\n"
                "try:\n"
                "    s.connect((h,p))\n"
                "    while c:=s.recv(4096): d+=c\n"
                "except ConnectionResetError: pass\n"
                "print(d.decode() or 'refused')\n")
        return self.run(self.client, sys.executable, "-c", code, host, str(port)).strip()


@pytest.fixture
def spaces() -> Iterator[Namespaces]:
    ip = require_tool("ip")
    ns = Namespaces(ip)
    made = []
    try:
        for name in (ns.client, ns.dispatch, ns.server):
            subprocess.run([ip, "netns", "add", name], check=True, timeout=30)
            made.append(name)
            ns.run(name, ip, "link", "set", "lo", "up")
        veth_c, veth_d = f"vc{os.getpid()}"[:15], f"vd{os.getpid()}"[:15]
        ns.run(ns.client, ip, "link", "add", veth_c, "type", "veth", "peer", "name", veth_d)
        ns.run(ns.client, ip, "link", "set", veth_d, "netns", ns.dispatch)
        for space, dev, v4, v6 in ((ns.client, veth_c, "10.99.0.2/24", "fd99::2/64"),
                                   (ns.dispatch, veth_d, "10.99.0.1/24", "fd99::1/64")):
            ns.run(space, ip, "addr", "add", v4, "dev", dev)
            ns.run(space, ip, "-6", "addr", "add", v6, "dev", dev, "nodad")
            ns.run(space, ip, "link", "set", dev, "up")
        for net in ("198.51.100.0/24", "192.0.2.0/24"):
            ns.run(ns.client, ip, "route", "add", net, "via", "10.99.0.1")
        ns.run(ns.client, ip, "-6", "route", "add", "2001:db8::/64", "via", "fd99::1")
        ns.veth = veth_d  # type: ignore[attr-defined]
        yield ns
    finally:
        for name in made:
            subprocess.run([ip, "netns", "del", name], timeout=30)


def tproxy(ns: Namespaces) -> None:
    nft = require_tool("nft")
    ip = ns.ip
    rules = (
        "table inet ufy {\n"
        " chain pre {\n"
        "  type filter hook prerouting priority mangle;\n"
        "  ip daddr 198.51.100.0/24 tcp dport { 22, 80 } "
        "tproxy ip to 127.100.100.1:1 meta mark set 1 accept\n"
        "  ip6 daddr 2001:db8::/64 tcp dport { 22, 80 } "
        "tproxy ip6 to [::ffff:127.100.100.1]:1 meta mark set 1 accept\n"
        " }\n"
        "}\n")
    subprocess.run([ip, "netns", "exec", ns.dispatch, nft, "-f", "-"], input=rules,
                   text=True, check=True, timeout=30)
    for family in ("-4", "-6"):
        ns.run(ns.dispatch, ip, family, "rule", "add", "fwmark", "1", "lookup", "100")
        ns.run(ns.dispatch, ip, family, "route", "add", "local",
               "0.0.0.0/0" if family == "-4" else "::/0", "dev", "lo", "table", "100")
    for dev in ("all", ns.veth):  # type: ignore[attr-defined]
        ns.run(ns.dispatch, "sysctl", "-qw", f"net.ipv4.conf.{dev}.route_localnet=1")


def test_tproxy_dual_stack_one_listener(procs: Processes, sockdir: Path,
                                        spaces: Namespaces) -> None:
    tproxy(spaces)
    server = spaces.prefix(spaces.server)
    web4 = receiver(procs, "a", f"{sockdir}/web4.sock", "--http", prefix=server)
    web6 = receiver(procs, "a", f"{sockdir}/web6.sock", "--http", prefix=server)
    ssh = receiver(procs, "a", f"{sockdir}/ssh-198.51.100.9.sock", "--tag", "ssh",
                   prefix=server)
    (sockdir / "www").mkdir()
    dispatcher(procs, sockdir / "d.conf",
               "listen,addr=::ffff:127.100.100.1,port=1,transparent\n"
               f"control,path={sockdir}/ctl\n"
               f"addr=198.51.100.7,port=80,send={sockdir}/web4.sock\n"
               f"addr=2001:db8::1:10,port=80,send={sockdir}/web6.sock\n"
               f"addr=198.51.100.0/24,port=22,send={sockdir}/ssh-%a.sock\n",
               prefix=spaces.prefix(spaces.dispatch))
    curl = require_tool("curl")
    for url in ("http://198.51.100.7/", "http://[2001:db8::1:10]/"):
        page = spaces.run(spaces.client, curl, "-sS", "--max-time", "10", url)
        assert "Directory listing" in page, page
    # the servers see the client's real address, and the address it dialled
    web4.wait_for("http ::ffff:10.99.0.2 ")  # an IPv4 client on the dual-stack listener
    web6.wait_for("http fd99::2 ")
    assert any(line.split()[3:] == ["::ffff:198.51.100.7", "80"] for line in web4.lines
               if line.startswith("conn ")), web4.text()
    assert any(line.split()[3:] == ["2001:db8::1:10", "80"] for line in web6.lines
               if line.startswith("conn ")), web6.text()
    words = spaces.ask("198.51.100.9", 22).split()
    assert words[:2] == ["ssh", "::ffff:10.99.0.2"] and words[3:] == ["::ffff:198.51.100.9",
                                                                       "22"]
    assert spaces.ask("198.51.100.8", 80) == "refused"  # no route: reset
    ssh.wait_for("conn ")
    assert ssh.count("conn ") == 1


def test_anyip_wildcard_listener(procs: Processes, sockdir: Path,
                                 spaces: Namespaces) -> None:
    spaces.run(spaces.dispatch, spaces.ip, "route", "add", "local", "192.0.2.0/24", "dev",
               "lo")
    server = spaces.prefix(spaces.server)
    for n in (5, 6):
        receiver(procs, "a", f"{sockdir}/ct-192.0.2.{n}.sock", "--tag", f"ct{n}",
                 prefix=server)
    dispatcher(procs, sockdir / "d.conf",
               "listen,addr=0.0.0.0,port=8080\n"
               f"addr=192.0.2.0/24,send={sockdir}/ct-%a.sock\n",
               prefix=spaces.prefix(spaces.dispatch))
    for n in (5, 6):
        words = spaces.ask(f"192.0.2.{n}", 8080).split()
        assert words[:2] == [f"ct{n}", "10.99.0.2"] and words[3:] == [f"192.0.2.{n}", "8080"]
    assert spaces.ask("192.0.2.7", 8080) == "refused"  # its receiver does not exist


def test_listener_made_in_another_namespace(procs: Processes, sockdir: Path,
                                            spaces: Namespaces) -> None:
    """netns=PATH: the dispatcher runs here; its listener lives in the dispatch space."""
    receiver(procs, "a", f"{sockdir}/r.sock", "--tag", "far",
             prefix=spaces.prefix(spaces.server))
    out = dispatcher(procs, sockdir / "d.conf",
                     f"listen,addr=10.99.0.1,port=8081,netns=/run/netns/{spaces.dispatch}\n"
                     f"send={sockdir}/r.sock\n")
    words = spaces.ask("10.99.0.1", 8081).split()
    assert words[:2] == ["far", "10.99.0.2"] and words[3:] == ["10.99.0.1", "8081"]
    assert stop(out) == 0
    assert os.path.exists(RECEIVER)


def test_wrapped_servers_and_inetd_in_the_server_namespace(procs: Processes, sockdir: Path,
                                                           spaces: Namespaces) -> None:
    """Unmodified servers behind the dispatcher: python's http.server and nginx (master
    and two workers) wrapped with receive=, one of them by protocol B, and an inetd
    program; all in a namespace with only loopback, clients in another."""
    nginx = require_tool("nginx")
    server = spaces.prefix(spaces.server)
    spaces.run(spaces.dispatch, spaces.ip, "route", "add", "local", "192.0.2.0/24", "dev",
               "lo")
    dispatcher(procs, sockdir / "d.conf",
               "listen,addr=0.0.0.0,port=80\n"
               f"control,path={sockdir}/ctl\nallow,slot=5,uid=0\n"
               f"addr=192.0.2.1,send={sockdir}/py.sock\n"
               f"addr=192.0.2.2,send={sockdir}/nginx.sock\n"
               "addr=192.0.2.3,slot=5\n"
               f"addr=192.0.2.4,send={sockdir}/inetd.sock\n",
               prefix=spaces.prefix(spaces.dispatch))
    python = start(procs, [*unixify_command(), "-r", f"in,port=8000,receive={sockdir}/py.sock",
                           sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                           "--directory", str(sockdir), "8000"], prefix=server)
    conf = nginx_config(sockdir, 8080, 2)
    start(procs, [*unixify_command(), "-r", f"in,port=8080,receive={sockdir}/nginx.sock",
                  nginx, "-c", str(conf)], prefix=server)
    start(procs, [*unixify_command(), "-r", f"in,port=8001,receive={sockdir}/ctl,slot=5",
                  sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                  "--directory", str(sockdir / "www"), "8001"], prefix=server)
    start(procs, [*unixify_command(), "inetd", "--receive", f"{sockdir}/inetd.sock", "--",
                  "sh", "-c", 'echo "$TCPREMOTEIP $TCPREMOTEPORT $TCPLOCALIP $TCPLOCALPORT"'],
          prefix=server)
    names = ("py.sock", "nginx.sock", "inetd.sock")
    wait_for(lambda: all((sockdir / name).exists() for name in names), what="the receivers")
    curl = require_tool("curl")

    def get(host: str) -> str:
        result = subprocess.run([spaces.ip, "netns", "exec", spaces.client, curl, "-sS",
                                 "--max-time", "10", "--retry", "20", "--retry-delay", "0",
                                 "--retry-all-errors", f"http://{host}/"],
                                capture_output=True, text=True, timeout=60)
        return result.stdout + result.stderr

    assert "d.conf" in get("192.0.2.1")           # python's directory listing
    python.wait_for('10.99.0.2 - - [')            # the client's real address in its log
    for _ in range(4):
        assert "hello from nginx" in get("192.0.2.2")
    wait_for(lambda: (sockdir / "access.log").read_text().count("10.99.0.2:") == 4,
             what="nginx's access log")
    assert "hello from nginx" in get("192.0.2.3")  # the www directory, by protocol B
    words = spaces.ask("192.0.2.4", 80).split()
    assert words[0] == "10.99.0.2" and words[2:] == ["192.0.2.4", "80"]
