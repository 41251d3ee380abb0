"""The shim's state under pressure: socket calls from signal handlers, and tables of
a thousand converted sockets and socket files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import HELPERS, compile_c, free_port, parse_kv, run_wrapped


@pytest.fixture(scope="session")
def sigsock(helper_dir: Path) -> str:
    """tests/helpers/sigsock.c: socket calls from a timer signal's handler."""
    return str(compile_c(HELPERS / "sigsock.c", helper_dir / "sigsock", extra=["-lpthread"]))


def test_socket_calls_from_a_signal_handler_are_kept(sigsock: str, sockdir: Path) -> None:
    # The handler often interrupts its own thread inside the shim (the other threads
    # keep the shim busy); its socket() must be recorded, its connect() converted and
    # its getpeername() answered as IPv4 like anywhere else.
    path = sockdir / "s"
    result = run_wrapped([f"out,tcp,path={path}"],
                         [sigsock, str(free_port()), str(path), "3", "3"], timeout=60)
    counts = parse_kv(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert int(counts["handler_rounds"]) > 1000 and int(counts["loop_rounds"]) > 1000, counts
    assert counts["handler_failures"] == "0" and counts["loop_failures"] == "0", counts
