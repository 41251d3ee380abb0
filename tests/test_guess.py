"""Predicted conversion under a rule with a condition: socket() guesses from the recent
connects whether to make a Unix socket at once, and a wrong guess never shows.  The
helper reads what the kernel really made with raw system calls, everything else as the
program sees it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import HELPERS, compile_c, free_port, parse_kv, run_wrapped

FAMILIES = {"127.0.0.1": (2, "0.0.0.0"), "::1": (10, "::")}


@pytest.fixture(scope="session")
def guess(helper_dir: Path) -> str:
    """The C program of tests/helpers/guess.c."""
    return str(compile_c(HELPERS / "guess.c", helper_dir / "guess"))


@dataclass
class Peers:
    """A Unix listener the rule converts connects to cport into, and a TCP listener on
    tport that no rule touches; both only queue connections."""
    host: str
    sock: Path
    cport: int
    tport: int

    def rule(self) -> str:
        return f"out,port={self.cport},path={self.sock}"

    def rules(self, kind: str) -> list[str]:
        """The conditional rule, or one that converts every connect."""
        return [self.rule()] if kind == "conditional" else [f"out,path={self.sock}"]


@pytest.fixture(params=["127.0.0.1", "::1"])
def peers(request: pytest.FixtureRequest, sockdir: Path) -> Iterator[Peers]:
    host: str = request.param
    sock = sockdir / "conv.sock"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(socket.AF_UNIX) as unix, socket.socket(family) as tcp:
        unix.bind(str(sock))
        unix.listen(64)
        tcp.bind((host, 0))
        tcp.listen(64)
        yield Peers(host, sock, free_port(), tcp.getsockname()[1])


def run_guess(guess: str, peers: Peers, args: list[str], rules: list[str] | None = None
              ) -> dict[str, str]:
    result = run_wrapped(rules or [peers.rule()], [guess, args[0], peers.host,
                                                   str(peers.cport), str(peers.tport),
                                                   *args[1:]], timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    info = parse_kv(result.stdout)
    assert "error" not in info and "set_fail" not in info, result.stdout + result.stderr
    return info


def test_the_guess_follows_the_recent_connects(guess: str, peers: Peers) -> None:
    # Unix at first; two unconverted connects in a row make it guess IP, two converted
    # ones Unix again; one odd connect does not turn it.
    info = run_guess(guess, peers, ["steps", "ttccctc"])
    made = [info[f"step{i}"].split(",")[0] for i in range(7)]
    assert made == ["unix", "inet", "inet", "inet", "unix", "unix", "unix"], info
    for i, dest in enumerate("ttccctc"):
        _, connect, peer, after = info[f"step{i}"].split(",")
        assert connect == "0", info
        assert int(peer) == (peers.cport if dest == "c" else peers.tport)
        assert after == ("unix" if dest == "c" else "inet")


def expect_connected(info: dict[str, str], peers: Peers, dest: str, prefix: str = "",
                     options: bool = True) -> None:
    family, _ = FAMILIES[peers.host]
    real = "unix" if dest == "c" else "inet"
    assert info[prefix + "connect"] in ("0", "-1,EINPROGRESS"), info
    assert info[prefix + "event"] == "1,4242,1", info        # epoll registration kept
    assert info[prefix + "so_error"] == "0"
    assert int(info[prefix + "peer_port"]) == (peers.cport if dest == "c" else peers.tport)
    local_family, local_host, local_port = info[prefix + "local"].split(",")
    assert (int(local_family), local_host) == (family, peers.host)
    assert int(local_port) > 0
    assert info[prefix + "real"] == real, info
    assert info[prefix + "write"] == "1"
    if not options:
        return
    for name, value in (("nodelay", 1), ("keepidle", 77), ("keepalive", 1), ("tos", 16)):
        assert int(info[prefix + name]) == value, (name, info)
        if real == "inet":  # the kernel's socket has them, not only our records
            assert int(info[prefix + "raw_" + name]) == value, (name, info)


@pytest.mark.parametrize("steer", ["-", "tt"])   # guess Unix, guess IP
@pytest.mark.parametrize("dest", ["c", "t"])     # converted, not converted
def test_a_client_sees_the_same_either_guess(guess: str, peers: Peers, steer: str,
                                             dest: str) -> None:
    family, any_host = FAMILIES[peers.host]
    info = run_guess(guess, peers, ["client", steer, dest])
    assert info["made"] == ("unix" if steer == "-" else "inet"), info
    # before connect it answers as the IP socket it stands for
    assert info["sockname"] == f"{family},{any_host},0"
    assert (info["domain"], info["protocol"]) == (str(family), "6")
    expect_connected(info, peers, dest)


@pytest.mark.parametrize("dest", ["c", "t"])
def test_binding_a_guessed_socket_makes_it_the_ip_socket(guess: str, peers: Peers,
                                                         dest: str) -> None:
    family, _ = FAMILIES[peers.host]
    info = run_guess(guess, peers, ["client", "-", dest, "bind"])
    assert info["made"] == "unix"
    assert (info["bind"], info["bound_real"]) == ("0", "inet"), info
    bound_family, bound_host, bound_port = info["bound"].split(",")
    assert (int(bound_family), bound_host) == (family, peers.host)
    assert int(bound_port) > 0
    for name, value in (("nodelay", 1), ("keepidle", 77), ("keepalive", 1), ("tos", 16)):
        assert int(info["bound_raw_" + name]) == value, (name, info)
    expect_connected(info, peers, dest)
    if dest == "t":  # the port it was bound to is the one it connects from
        assert info["local"] == info["bound"]


@pytest.mark.parametrize("rule", ["conditional", "every"])
def test_options_a_unix_socket_cannot_carry_reach_the_ip_socket(guess: str, peers: Peers,
                                                                rule: str) -> None:
    # SO_OOBINLINE, SO_BINDTODEVICE and a long IP_OPTIONS set on a guessed socket that
    # then becomes an IP one (here by a bind no rule converts) are on the kernel's
    # socket, as without the guess.  Before, they stayed on the Unix socket and were
    # lost with it.
    info = run_guess(guess, peers, ["client", "-", "t", "bind,extra"], peers.rules(rule))
    assert info["bound_real"] == "inet", info
    assert info["bound_raw_oobinline"] == "1", info
    assert info["bound_raw_bindtodevice"] == "lo", info
    if peers.host == "127.0.0.1":
        assert info["bound_raw_ipoptions"] == "20", info
    if rule == "conditional":
        expect_connected(info, peers, "t")
        assert (info["raw_oobinline"], info["raw_bindtodevice"]) == ("1", "lo")


@pytest.mark.parametrize("rule", ["conditional", "every"])
def test_options_never_set_answer_as_an_ip_socket(guess: str, peers: Peers,
                                                  rule: str) -> None:
    # A guessed socket is a Unix one, whose buffers are not TCP's and which has no IP-
    # or TCP-level options: asked before the connect, it answers as the IP socket
    # (before this round: the Unix socket's buffer sizes, and 0 for a TTL or a
    # keepalive count).
    info = run_guess(guess, peers, ["client", "-", "c", "defaults"], peers.rules(rule))
    assert info["made"] == "unix"
    for name in ("sndbuf", "ttl", "keepcnt"):
        assert info[name] == info["tcp_" + name], (name, info)
    expect_connected(info, peers, "c")


@pytest.mark.parametrize("rule", ["conditional", "every"])
def test_a_copy_made_before_bind_is_the_same_socket(guess: str, peers: Peers,
                                                     rule: str) -> None:
    # dup of a guessed socket, then a bind no rule converts: both fds name the one IP
    # socket, bound once (before, the copy stayed the Unix socket, unbound).
    info = run_guess(guess, peers, ["client", "-", "t", "dup,bind"], peers.rules(rule))
    assert info["made"] == "unix"
    assert info["bound_copy"] == info["bound"], info
    if rule == "conditional":
        expect_connected(info, peers, "t")
        assert (int(info["copy_peer_port"]), info["copy_real"]) == (peers.tport, "inet")


@pytest.mark.parametrize("dest", ["c", "t"])
def test_a_copy_made_before_connect(guess: str, peers: Peers, dest: str) -> None:
    # Left TCP, both fds are the one connected socket, as without the guess.  Converted,
    # the copy stays the IP socket (a conversion replaces the one fd it is called on).
    info = run_guess(guess, peers, ["client", "-", dest, "dup"])
    expect_connected(info, peers, dest)
    if dest == "t":
        assert (int(info["copy_peer_port"]), info["copy_real"]) == (peers.tport, "inet")
    else:
        assert (info["copy_peer_port"], info["copy_real"]) == ("-1", "inet")


@pytest.mark.parametrize("steer", ["-", "tt"])
@pytest.mark.parametrize("dest", ["c", "t"])
def test_fork_between_socket_and_connect(guess: str, peers: Peers, steer: str,
                                         dest: str) -> None:
    info = run_guess(guess, peers, ["client", steer, dest, "fork"])
    assert info["child_status"] == "0"
    expect_connected(info, peers, dest, "child_")
    assert info["parent_close"] == "0"
    info = run_guess(guess, peers, ["client", steer, dest, "forkparent"])
    assert info["child_status"] == "0"
    expect_connected(info, peers, dest)


@pytest.mark.parametrize("steer", ["-", "tt"])
@pytest.mark.parametrize("dest", ["c", "t"])
def test_exec_between_socket_and_connect(guess: str, peers: Peers, steer: str,
                                         dest: str) -> None:
    # The new image registers the socket with epoll and connects: a conversion then
    # keeps the registration (before, the new image did not watch the socket and the
    # registration was lost with it).
    family, _ = FAMILIES[peers.host]
    info = run_guess(guess, peers, ["client", steer, dest, "exec"])
    assert info["made"] == ("unix" if steer == "-" else "inet")
    # the new image gets the IP socket the old one stood for, with its options
    assert (info["execd_domain"], info["execd_made"]) == (str(family), "inet"), info
    expect_connected(info, peers, dest, options=dest == "t")
