"""Datagram (UDP) sockets: both directions, the receive and send calls' corner cases,
and real programs (dnsmasq with dig, socat, a Python echo pair)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    HELPERS,
    Processes,
    free_port,
    read_until,
    require_tool,
    run_wrapped,
    wait_for_socket,
)

ECHO = str(HELPERS / "udp_echo.py")


def udp_port_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def echo_server(procs: Processes, rules: list[str], port: int) -> subprocess.Popen[str]:
    """The Python UDP echo server on 127.0.0.1:port, wrapped by rules, once it is ready."""
    server = procs.wrapped(rules, [sys.executable, ECHO, "server", "127.0.0.1", str(port)])
    read_until(server, "ready")
    return server


def without_ports(text: str) -> list[str]:
    """Output lines with port numbers blanked: fake ports differ from real ones."""
    return [re.sub(r" \d+ len=", " PORT len=", line) for line in text.splitlines()]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_receive_and_send_calls_behave_as_on_udp(procs: Processes, sockdir: Path,
                                                  dgram_helper: str, host: str) -> None:
    """peek, NULL and short address buffers, MSG_TRUNC, recvmmsg/sendmmsg, recvmsg with
    IP_PKTINFO, connect+send: the same output converted as over real UDP."""
    outputs = []
    for converted in (False, True):
        port = free_port()
        sock = sockdir / f"d{int(converted)}.sock"
        if converted:
            server = procs.wrapped([f"in,udp,path={sock}"], [dgram_helper, "server", host,
                                                              str(port)])
        else:
            server = procs.start([dgram_helper, "server", host, str(port)])
        read_until(server, "ready")
        client_cmd = [dgram_helper, "client", host, str(port)]
        if converted:
            assert not udp_port_bound(port)
            client = run_wrapped([f"out,udp,port={port},path={sock}"], client_cmd)
        else:
            client = subprocess.run(client_cmd, capture_output=True, text=True, timeout=10)
        assert client.returncode == 0, client
        rest, _ = server.communicate(timeout=10)
        outputs.append((without_ports(client.stdout), without_ports(rest)))
    assert outputs[0] == outputs[1]
    client_lines, server_lines = outputs[1]
    assert "peek_same=1" in server_lines and "recvmsg_same=1 pktinfo=1" in server_lines
    assert "connected_reply=ping" in client_lines


def test_python_echo_pair(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    sock = sockdir / "echo.sock"
    echo_server(procs, [f"in,udp,port={port},path={sock}"], port)
    client = run_wrapped([f"out,udp,port={port},path={sock}"],
                         [sys.executable, ECHO, "client", "127.0.0.1", str(port), "x", "3"])
    assert client.returncode == 0 and client.stdout.startswith("ok x 127.0.0.1 "), client


def test_many_clients_get_their_own_replies(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    sock = sockdir / "echo.sock"
    echo_server(procs, [f"in,udp,path={sock}"], port)
    clients = [procs.wrapped([f"out,udp,path={sock}"],
                             [sys.executable, ECHO, "client", "127.0.0.1", str(port),
                              f"c{i}", "40"]) for i in range(12)]
    senders = set()
    for i, client in enumerate(clients):
        out, err = client.communicate(timeout=30)
        assert client.returncode == 0, (out, err)
        tag, sender = out.split(" ", 1)[1].split(" ", 1)
        assert tag == f"c{i}"
        senders.add(sender.strip())
    assert len(senders) == len(clients)  # each client has an address of its own


def test_native_unix_clients_named_abstract_and_unnamed(procs: Processes,
                                                         sockdir: Path) -> None:
    port = free_port()
    sock = sockdir / "echo.sock"
    server = echo_server(procs, [f"in,udp,path={sock}"], port)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as named:
        named.bind(f"\0ufy-test-{os.getpid()}")
        named.settimeout(5)
        named.sendto(b"abstract", str(sock))
        reply, source = named.recvfrom(100)
        assert reply.endswith(b"|abstract") and reply.startswith(b"127.0.0.1 ")
        assert source == str(sock)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unnamed:
        unnamed.sendto(b"unnamed", str(sock))
    text = read_until(server, "reply failed: EDESTADDRREQ")
    assert "Traceback" not in text
    os.killpg(server.pid, 15)
    _, err = server.communicate(timeout=5)
    assert "without an address" in err


def test_reject_and_ignore_for_unconnected_sendto(dgram_helper: str, sockdir: Path) -> None:
    port = free_port()
    rejected = run_wrapped([f"out,udp,port={port},reject=ENETUNREACH"],
                           [dgram_helper, "send", "127.0.0.1", str(port)])
    assert rejected.stdout.strip() == "sendto=ENETUNREACH", rejected
    # Not matched: a real UDP datagram.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(5)
        real_port = listener.getsockname()[1]
        sent = run_wrapped([f"out,udp,port={port},path={sockdir}/x.sock"],
                           [dgram_helper, "send", "127.0.0.1", str(real_port)])
        assert sent.stdout.strip() == "sendto=ok", sent
        assert listener.recvfrom(10)[0] == b"x"
    # Matched, but nobody listens at the path: dropped silently, as UDP does.
    dropped = run_wrapped([f"out,udp,port={port},path={sockdir}/nobody.sock"],
                          [dgram_helper, "send", "127.0.0.1", str(port)])
    assert dropped.stdout.strip() == "sendto=ok", dropped


def test_converted_sender_refuses_unconverted_destination(sockdir: Path) -> None:
    """Once a socket is a Unix socket it cannot send UDP: a clear error, not a crash."""
    port = free_port()
    code = ("import socket\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"s.sendto(b'a',('127.0.0.1',{port}))\n"
            "try:\n s.sendto(b'b',('127.0.0.1',9)); print('sent')\n"
            "except OSError as e: print(e.errno)\n")
    result = run_wrapped([f"out,udp,port={port},path={sockdir}/x.sock"],
                         [sys.executable, "-c", code])
    assert result.stdout.strip() == str(__import__("errno").ENETUNREACH), result
    assert "no rule converts datagrams to 127.0.0.1 port 9" in result.stderr


def test_blackholed_datagram_listener(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    echo_server(procs, [f"in,udp,port={port},blackhole"], port)
    assert not udp_port_bound(port)
    assert list(sockdir.iterdir()) == []


def test_abstract_datagram_both_sides(procs: Processes) -> None:
    port = free_port()
    name = f"ufy-dgram-{os.getpid()}-%p"
    echo_server(procs, [f"in,udp,abstract={name}"], port)
    client = run_wrapped([f"out,udp,abstract={name}"],
                         [sys.executable, ECHO, "client", "127.0.0.1", str(port), "abs", "3"])
    assert client.returncode == 0 and client.stdout.startswith("ok abs"), client


@pytest.mark.no_asan  # dnsmasq hangs at start with libasan preloaded, shim or not
@pytest.mark.parametrize("wildcard", [False, True])
def test_dnsmasq_answers_dig(procs: Processes, sockdir: Path, wildcard: bool) -> None:
    dnsmasq = require_tool("dnsmasq")
    dig = require_tool("dig")
    port = free_port()
    udp, tcp = sockdir / "dns.sock", sockdir / "dns-tcp.sock"
    listen = [] if wildcard else ["--listen-address=127.0.0.1", "--bind-interfaces"]
    server = procs.wrapped(
        [f"in,udp,port={port},path={udp}", f"in,tcp,port={port},path={tcp}"],
        [dnsmasq, "-d", "-k", "--no-resolv", "--no-hosts", f"--port={port}", "-u", "root",
         "--pid-file=", "--address=/example.test/10.1.2.3", *listen])
    wait_for_socket(udp)
    wait_for_socket(tcp)
    assert not udp_port_bound(port)
    for server_addr in (["127.0.0.1"] + (["::1"] if wildcard else [])):
        answer = run_wrapped([f"out,udp,port={port},path={udp}"],
                             [dig, "+short", "+tries=1", "+time=3", f"@{server_addr}",
                              "-p", str(port), "example.test"], timeout=20)
        assert answer.stdout.strip() == "10.1.2.3", answer
    answer = run_wrapped([f"out,tcp,port={port},path={tcp}"],
                         [dig, "+tcp", "+short", "+tries=1", "+time=3", "@127.0.0.1",
                          "-p", str(port), "example.test"], timeout=20)
    assert answer.stdout.strip() == "10.1.2.3", answer
    assert server.poll() is None


def test_socat_udp_listen_and_connect(procs: Processes, sockdir: Path) -> None:
    socat = require_tool("socat")
    port = free_port()
    sock = sockdir / "socat.sock"
    procs.wrapped([f"in,udp,path={sock}"],
                  [socat, f"UDP-LISTEN:{port},bind=127.0.0.1", "PIPE"])
    wait_for_socket(sock)
    result = run_wrapped([f"out,udp,path={sock}"],
                         [socat, "-t", "1", "-", f"UDP:127.0.0.1:{port}"],
                         input="hello over a unix datagram socket\n")
    assert result.stdout == "hello over a unix datagram socket\n", result


def test_unconnected_send_before_server_exists_then_reply(procs: Processes,
                                                          sockdir: Path) -> None:
    """A converted sender keeps its address across destinations it names."""
    port = free_port()
    sock = sockdir / "late.sock"
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(10)\n"
            f"s.sendto(b'lost',('127.0.0.1',{port}))\n"
            "print('sent',flush=True); sys.stdin.readline()\n"
            f"s.sendto(b'found',('127.0.0.1',{port})); print(s.recvfrom(100)[0].decode())\n")
    client = procs.wrapped([f"out,udp,port={port},path={sock}"], [sys.executable, "-c", code],
                           stdin=subprocess.PIPE)
    read_until(client, "sent")
    echo_server(procs, [f"in,udp,path={sock}"], port)
    out, err = client.communicate("go\n", timeout=20)
    assert out.strip().endswith("|found"), (out, err)
