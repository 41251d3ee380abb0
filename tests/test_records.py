"""What the shim remembers of a socket it may convert has no fixed size: every epoll
registration and every IP- or TCP-level option comes through a conversion."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HELPERS, compile_c, free_port, parse_kv, run_wrapped


@pytest.fixture(scope="session")
def records(helper_dir: Path) -> str:
    """The C program of tests/helpers/records.c."""
    return str(compile_c(HELPERS / "records.c", helper_dir / "records"))


@pytest.fixture
def unix_listener(sockdir: Path) -> Iterator[Path]:
    """A listening Unix socket that takes connections into its backlog."""
    path = sockdir / "peer.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen(16)
        yield path


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("n", [4, 9])
@pytest.mark.parametrize("bind", [False, True])
def test_every_epoll_instance_follows_a_converted_socket(records: str, unix_listener: Path,
                                                          host: str, n: int,
                                                          bind: bool) -> None:
    """bind: the socket is pending, becomes IP at bind, and converts at connect."""
    port = free_port()
    rule = f"out,path={unix_listener}" if bind else f"out,port={port},path={unix_listener}"
    result = run_wrapped([rule], [records, "epoll", host, str(port), str(n)]
                         + (["bind"] if bind else []), timeout=60)
    info = parse_kv(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (info["seen"], info["mod_fail"], info["del_fail"]) == (str(n - 2), "0", "0"), \
        result.stdout
    assert "stale" not in info, result.stdout


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("then", ["bind", "connect", "dup"])
def test_every_option_survives_conversion_or_materializing(
        records: str, unix_listener: Path, host: str, then: str) -> None:
    """bind: the socket is pending (every connect converts) and binding where no rule
    says makes it the IP socket it was; connect: an IP socket becomes a Unix one; dup:
    a pending socket's copy answers for the options."""
    port = free_port()
    rule = f"out,port={port},path={unix_listener}" if then == "connect" else \
        f"out,path={unix_listener}"
    result = run_wrapped([rule], [records, "opts", host, str(port), then], timeout=60)
    info = parse_kv(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert int(info["options"]) > 8
    assert info["bad"] == "0", result.stdout + result.stderr
    assert "set_fail" not in result.stdout


@pytest.mark.no_asan  # the sanitizer's shadow memory does not live under RLIMIT_AS
def test_without_memory_the_call_fails_rather_than_the_record_lost(
        records: str, sockdir: Path) -> None:
    result = run_wrapped([f"out,path={sockdir / 'x.sock'}"], [records, "nomem", "127.0.0.1"])
    info = parse_kv(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (info["opt"], info["epoll"]) == ("-1,ENOMEM", "-1,ENOMEM"), result.stdout
    assert info["undone"] == "1"   # the refused registration did not stay in the kernel
    assert (info["opt_later"], info["epoll_later"]) == ("0", "0")
    assert result.stderr.count("Cannot allocate memory") == 2, result.stderr
