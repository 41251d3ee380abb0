"""unixify inetd receives through the shim's receiver (receive.c): the socket file's
handling (stale, live, another user's; mode and owner before it appears) is the shim's,
and the programs it runs see a plain TCP socket and an environment without the shim."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from conftest import Processes, run_wrapped, unixify_command, wait_for
from test_receive import Sender, client

NOBODY = 65534


def stale_file_of_nobody(path: Path) -> os.stat_result:
    """A socket file of uid 65534 whose socket is gone."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
        gone.bind(str(path))
    os.chown(path, NOBODY, NOBODY)
    return os.lstat(path)


def live(path: str) -> bool:
    """Is a datagram socket bound at path?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def serves_then_stops(inetd: subprocess.Popen[str], path: str, source: str) -> None:
    """inetd (running sh -c 'echo "$TCPREMOTEIP"') serves a client from source; SIGTERM
    ends it with status 0 and its receiver file gone."""
    sender = Sender(path)
    assert client(sender.port, source, b"")[1] == f"{source}\n".encode()
    inetd.terminate()
    assert inetd.wait(timeout=10) == 0
    assert not os.path.exists(path)
    sender.close()


def sticky(sockdir: Path) -> None:
    os.chmod(sockdir, 0o1777)


def test_inetd_leaves_another_users_stale_file_in_a_sticky_directory(
        procs: Processes, sockdir: Path) -> None:
    """A stale socket file of uid 65534 in a sticky, world-writable directory is not
    ours to take, though root could remove it: inetd refuses (exit 1) and the file stays.
    Before, inetd found it stale (a datagram connect was refused), removed it and bound
    its own there."""
    sticky(sockdir)
    path = sockdir / "inetd.sock"
    before = stale_file_of_nobody(path)
    inetd = procs.start([*unixify_command(), "inetd", "--receive", str(path), "--", "cat"])
    assert inetd.wait(timeout=20) == 1
    err = inetd.stderr.read() if inetd.stderr else ""
    assert "belongs to uid 65534 in a sticky directory" in err, err
    after = os.lstat(path)
    assert (after.st_ino, after.st_uid) == (before.st_ino, NOBODY)


def test_wrapped_server_leaves_another_users_stale_file_in_a_sticky_directory(
        sockdir: Path) -> None:
    """The same for a path= rule: the bind fails with EADDRINUSE and no port opens.
    Before, the shim (running as root) replaced the file of uid 65534."""
    sticky(sockdir)
    path = sockdir / "app.sock"
    before = stale_file_of_nobody(path)
    code = ("import socket; s = socket.socket()\n"
            "try:\n s.bind(('127.0.0.1', 7)); print('bound')\n"
            "except OSError as e: print('errno', e.errno)\n")
    done = run_wrapped([f"in,port=7,path={path}"], [sys.executable, "-c", code])
    assert done.stdout.strip() == "errno 98", done
    assert os.lstat(path).st_ino == before.st_ino


def test_own_stale_file_in_a_sticky_directory_is_still_replaced(procs: Processes,
                                                                sockdir: Path) -> None:
    """A stale file of our own uid there is replaced as before, and removed at exit."""
    sticky(sockdir)
    path = str(sockdir / "inetd.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
        gone.bind(path)
    inetd = procs.start([*unixify_command(), "inetd", "--receive", path, "--", "sh", "-c",
                         'echo "$TCPREMOTEIP"'])
    wait_for(lambda: live(path), what="inetd's receiver in place of the stale file")
    serves_then_stops(inetd, path, "127.0.0.71")


def test_inetd_never_takes_a_live_receiver_file(procs: Processes, sockdir: Path) -> None:
    """A socket file someone is bound to is left alone: inetd exits 1, and the socket
    there still gets what is sent to the path."""
    path = str(sockdir / "live.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as live:
        live.bind(path)
        inetd = procs.start([*unixify_command(), "inetd", "--receive", path, "--", "cat"])
        assert inetd.wait(timeout=20) == 1
        err = inetd.stderr.read() if inetd.stderr else ""
        assert "in use by a live socket" in err and len(err.splitlines()) <= 3, err
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
            out.sendto(b"still mine", path)
        live.settimeout(10)
        assert live.recv(100) == b"still mine"


def test_inetd_mode_and_owner_are_set_before_the_file_appears(procs: Processes,
                                                              sockdir: Path) -> None:
    """--mode/--owner/--group (the rule language's mode=/owner=/group=): every look at
    the path, from before inetd starts until it serves, sees the file with them or no
    file at all.  Before, inetd knew no such options."""
    path = str(sockdir / "owned.sock")
    inetd = procs.start([*unixify_command(), "inetd", "--mode", "0620", "--owner", "nobody",
                         "--group", str(NOBODY), "--receive", path, "--", "sh", "-c",
                         'echo "$TCPREMOTEIP"'])
    seen = None
    deadline = time.monotonic() + 20
    while seen is None and time.monotonic() < deadline and inetd.poll() is None:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        seen = (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
    assert seen == (0o620, NOBODY, NOBODY), (seen, inetd.poll())
    serves_then_stops(inetd, path, "127.0.0.72")


def test_inetd_file_options_are_checked_as_in_rules(sockdir: Path) -> None:
    """Bad --mode/--owner/--group, or file options with --slot: one line, exit 2."""
    path = str(sockdir / "x.sock")
    for args, text in ((["--mode", "9"], "--mode: mode '9' is not an octal file mode"),
                       (["--owner", "no such user"], "unknown user 'no such user'"),
                       (["--group", "4294967295"], "group id 4294967295 is out of range"),
                       (["--slot", "3", "--mode", "0600"], "'slot=' makes none")):
        done = subprocess.run([*unixify_command(), "inetd", *args, "--receive", path, "--",
                               "cat"], capture_output=True, text=True, timeout=20)
        assert done.returncode == 2 and text in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert not os.path.exists(path)


CHILD = ("import os, socket\n"
         "c = socket.socket(fileno=0)\n"
         "mine = sorted(k for k in os.environ if k.startswith('UNIXIFY') or k == 'LD_PRELOAD')\n"
         "print(c.family.name, c.type.name, os.environ.get('MARK'), "
         "{k: os.environ[k] for k in mine}, flush=True)\n")


def test_inetd_child_runs_plain(procs: Processes, sockdir: Path) -> None:
    """The program sees the passed TCP socket itself on stdin and the caller's
    environment: its own LD_PRELOAD kept, nothing of the shim (no LD_PRELOAD addition,
    no UNIXIFY_RULES, no UNIXIFY_INHERIT naming the receiver's file)."""
    path = str(sockdir / "plain.sock")
    for preload in (None, "libc.so.6"):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("UNIXIFY_") and k != "LD_PRELOAD"}
        env["MARK"] = "kept"
        if "UNIXIFY_SHIM" in os.environ:  # the sanitizer build (its runtime goes first)
            env["UNIXIFY_SHIM"] = os.environ["UNIXIFY_SHIM"]
        if preload:
            env["LD_PRELOAD"] = preload
        inetd = procs.start([*unixify_command(), "inetd", "--receive", path, "--",
                             sys.executable, "-c", CHILD], env=env)
        wait_for(lambda: os.path.exists(path), what="inetd's receiver")
        sender = Sender(path)
        reply = client(sender.port, "127.0.0.73", b"")[1].decode()
        want = {"LD_PRELOAD": preload} if preload else {}
        assert reply == f"AF_INET SOCK_STREAM kept {want}\n"
        inetd.terminate()
        assert inetd.wait(timeout=10) == 0
        sender.close()


def test_exec_without_the_shim_gets_no_inherit_variable(sockdir: Path) -> None:
    """A wrapped program holding a converted listener runs a child whose environment
    does not preload the shim: the child gets no UNIXIFY_INHERIT (it has no use for it,
    and it named our socket files).  A child that preloads it still does.  Before, both
    got it."""
    path = sockdir / "held.sock"
    code = ("import os, socket, subprocess, sys\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 7)); s.listen()\n"
            "show = [sys.executable, '-c', 'print(b\"UNIXIFY_INHERIT=\" in '\n"
            "        'open(\"/proc/self/environ\", \"rb\").read())']\n"
            "plain = {k: v for k, v in os.environ.items() if k != 'LD_PRELOAD'}\n"
            "subprocess.run(show, env=plain)\n"
            "subprocess.run(show, env=dict(os.environ))\n")
    done = run_wrapped([f"in,port=7,path={path}"], [sys.executable, "-c", code])
    assert done.stdout.split() == ["False", "True"], done

