"""The shim's state under pressure: socket calls from signal handlers, and tables of
a thousand converted sockets and socket files."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import HELPERS, compile_c, free_port, parse_kv, require_tool, run_wrapped


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



@pytest.fixture(scope="session")
def sigmix(helper_dir: Path) -> str:
    """tests/helpers/sigmix.c: every kind of shim section from handlers and threads."""
    return str(compile_c(HELPERS / "sigmix.c", helper_dir / "sigmix", extra=["-lpthread"]))


@pytest.mark.parametrize("threads", [3, 16])
def test_handlers_and_threads_mix_fast_and_masked_sections(sigmix: str, sockdir: Path,
                                                           threads: int) -> None:
    # Handlers interrupt fast sections (socket, connect, close) and find the lock held
    # by their own thread, while other threads are in masked ones (spilled options and
    # epoll registrations, datagram peers, socket-file records), and the other way
    # round; some handlers fork.  Nothing may be lost or misreported, nothing may hang
    # (the helper's alarm), and no listener's socket file may be left behind.
    tcp, udp, listen = free_port(), free_port(), free_port() // 2 * 2
    rules = [f"out,tcp,port={tcp},path={sockdir}/s", f"out,udp,port={udp},path={sockdir}/u",
             f"in,tcp,port={listen}-{listen + 99},path={sockdir}/l%p"]
    result = run_wrapped(rules, [sigmix, str(sockdir), str(tcp), str(udp), str(listen), "3",
                                 str(threads), "20"], timeout=60)
    counts = parse_kv(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    for kind in ("tcp", "opts", "epoll", "udp", "listen"):
        for where in ("loop", "handler"):
            assert int(counts[f"{where}_{kind}_rounds"]) > 10, counts
            assert counts[f"{where}_{kind}_failures"] == "0", counts
    assert int(counts["forks"]) > 10, counts
    # a bind while a child forked meanwhile still holds the last listener fails, as on
    # TCP; how often depends on timing (how many rounds the loops fit in), so only
    # "mostly busy" would be wrong: a file left live after its socket is gone
    listen_rounds = int(counts["handler_listen_rounds"]) + int(counts["loop_listen_rounds"])
    assert int(counts["listen_busy"]) < listen_rounds // 2, counts
    assert sorted(p.name for p in sockdir.iterdir()) == ["s", "u"]



@pytest.fixture(scope="session")
def sigjump(helper_dir: Path) -> str:
    """tests/helpers/sigjump.c: a handler leaving socket()/close() by siglongjmp."""
    return str(compile_c(HELPERS / "sigjump.c", helper_dir / "sigjump", extra=["-lpthread"]))


@pytest.mark.xfail(strict=True, reason="a fast section left by siglongjmp keeps the lock: "
                   "other threads spin for ever (3dc2b2c; blocking signals in every "
                   "section, as before it, passes)")
def test_a_handler_leaving_by_siglongjmp_does_not_keep_the_lock(sigjump: str,
                                                                sockdir: Path) -> None:
    # socket() and close() are async-signal-safe, so a handler may leave them by
    # siglongjmp (connect timeouts by alarm did).  The other thread must go on.
    result = run_wrapped([f"out,tcp,port={free_port()},path={sockdir}/s"], [sigjump, "2"],
                         timeout=60)
    counts = parse_kv(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert int(counts["jumps"]) > 100, counts
    assert counts["other_went_on"] == "1", counts



def test_a_neighbours_spilled_options_leave_connections_without_mask_calls(
        helper_dir: Path, sockdir: Path, tmp_path: Path) -> None:
    # Per-fd updates never block signals; one socket in the same chunk of the table
    # with options past the inline ones must not make every close block them.
    strace = require_tool("strace")
    helper = compile_c(HELPERS / "spillclose.c", helper_dir / "spillclose")
    port, log = free_port(), tmp_path / "strace"
    result = run_wrapped([f"out,tcp,port={port},path={sockdir}/s"],
                         [strace, "-f", "-c", "-e", "trace=rt_sigprocmask", "-o", str(log),
                          str(helper), str(sockdir / "s"), str(port), "500"], timeout=60)
    assert result.returncode == 0 and "failed=0" in result.stdout, result.stdout + result.stderr
    calls = [int(line.split()[3]) for line in log.read_text().splitlines()
             if line.endswith("rt_sigprocmask")]
    assert calls and calls[0] < 100, log.read_text()  # 2 per connection before


LISTENERS = 1000

# Opens LISTENERS converted listeners on ports from argv[1], then: "exit" (returns),
# "closefrom" / "close_range" (closes them all with that libc call, then counts the
# socket files left while still running), or "exec" (passes them all to AFTER_EXEC).
MANY = textwrap.dedent("""\
    import ctypes, os, resource, socket, sys
    base, count, how, sockdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    socks = []
    for port in range(base, base + count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", port)); s.listen(1)
        socks.append(s)
    print("files", len(os.listdir(sockdir)), flush=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if how == "closefrom":
        libc.closefrom(socks[0].fileno())
    elif how == "close_range":
        libc.close_range(socks[0].fileno(), 0xFFFFFFFF, 0)
    elif how == "exec":
        for s in socks:
            s.set_inheritable(True)
        fds = ",".join(str(s.detach()) for s in socks)
        os.execv(sys.executable, [sys.executable, "-c", sys.argv[5], fds])
    else:  # exit with the sockets open: the library closes them and removes the files
        fds = [s.detach() for s in socks]
    print("left", len(os.listdir(sockdir)), flush=True)
""")

AFTER_EXEC = textwrap.dedent("""\
    import socket, sys
    seen = [socket.socket(fileno=int(fd)).getsockname() for fd in sys.argv[1].split(",")]
    print("inet", sum(1 for name in seen if isinstance(name, tuple)), flush=True)
""")


def run_many(how: str, sockdir: Path) -> tuple[dict[str, str], str]:
    """What MANY printed, and its log lines."""
    base = 20000
    result = run_wrapped([f"in,path={sockdir}/%p.sock"],
                         [sys.executable, "-c", MANY, str(base), str(LISTENERS), how, str(sockdir),
                          AFTER_EXEC], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(line.split(" ", 1) for line in result.stdout.splitlines()), result.stderr


def test_thousand_listeners_files_removed_at_exit(sockdir: Path) -> None:
    seen, log = run_many("exit", sockdir)
    assert seen["files"] == str(LISTENERS)
    assert len(os.listdir(sockdir)) == 0 and log == ""


@pytest.mark.parametrize("how", ["closefrom", "close_range"])
def test_thousand_listeners_closed_at_once_remove_their_files(how: str,
                                                              sockdir: Path) -> None:
    seen, log = run_many(how, sockdir)
    assert seen["files"] == str(LISTENERS) and seen["left"] == "0", seen
    assert log == ""


def test_thousand_listeners_across_exec(sockdir: Path) -> None:
    # Every one reaches the new image as an IP listener, and the new image removes
    # every file when it exits.
    seen, log = run_many("exec", sockdir)
    assert seen["files"] == str(LISTENERS) and seen["inet"] == str(LISTENERS), seen
    assert len(os.listdir(sockdir)) == 0 and log == ""
