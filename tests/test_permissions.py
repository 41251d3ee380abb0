"""Socket file permissions: mode=, owner=, group=, --mode, set before the file appears."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Processes, read_until, require_tool, run_wrapped, unixify_command

LISTEN = ("import socket,sys\n"
          "s=socket.socket(); s.bind(('127.0.0.1',int(sys.argv[1]))); s.listen()\n"
          "print('ready',flush=True); sys.stdin.readline()\n")


def listen(procs: Processes, rules: list[str], port: int,
           extra: list[str] | None = None, umask: int = 0) -> None:
    args = [*unixify_command(), *(extra or [])]
    for rule in rules:
        args += ["-r", rule]
    proc = procs.start([*args, sys.executable, "-c", LISTEN, str(port)],
                       stdin=subprocess.PIPE, preexec_fn=lambda: os.umask(umask))
    read_until(proc, "ready")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o007])
def test_default_mode_follows_the_umask(procs: Processes, sockdir: Path, umask: int) -> None:
    # What README says: without mode= or --mode, the file gets 0777 less the program's
    # umask, as a native Unix server's would; --mode overrides the umask.
    listen(procs, [f"in,port=7211,path={sockdir}/u.sock"], 7211, umask=umask)
    assert stat.S_IMODE((sockdir / "u.sock").stat().st_mode) == 0o777 & ~umask
    listen(procs, [f"in,port=7212,path={sockdir}/m.sock"], 7212, ["--mode", "0660"],
           umask=umask)
    assert stat.S_IMODE((sockdir / "m.sock").stat().st_mode) == 0o660


def test_mode_owner_and_group(procs: Processes, sockdir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    listen(procs, [f"in,port=7201,path={sockdir}/a.sock,mode=0640,owner=nobody,group={group}",
                   f"in,port=7202,path={sockdir}/b.sock,mode=600",
                   f"in,port=7203,path={sockdir}/c.sock,owner={nobody.pw_uid}"], 7201)
    info = (sockdir / "a.sock").stat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o640
    assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert not list(sockdir.glob(".unixify-*"))  # the private directory is gone


def test_default_mode_for_all_rules(procs: Processes, sockdir: Path) -> None:
    listen(procs, [f"in,port=7211,path={sockdir}/%p.sock"], 7211, ["--mode", "0600"])
    assert stat.S_IMODE((sockdir / "7211.sock").stat().st_mode) == 0o600
    listen(procs, [f"in,port=7212,path={sockdir}/%p.sock,mode=0666"], 7212, ["--mode", "600"])
    assert stat.S_IMODE((sockdir / "7212.sock").stat().st_mode) == 0o666
    bad = subprocess.run([*unixify_command(), "--mode", "0999", "-r", "in,path=/x", "true"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "--mode: mode '0999' is not an octal" in bad.stderr


def test_the_file_appears_only_with_its_final_permissions(sockdir: Path) -> None:
    """Created in a private directory, given its mode and owner there, then renamed into
    place, every step after mkdir through the directory's fd (strace -y shows the path
    behind an fd): nothing is ever bound at the final path itself."""
    strace = require_tool("strace")
    log = sockdir / "trace"
    final = sockdir / "final.sock"
    subprocess.run([strace, "-f", "-qq", "-y", "-o", str(log), "-e",
                    "trace=bind,chmod,fchmodat,lchown,fchownat,rename,renameat2,mkdir,mkdirat",
                    *unixify_command(), "-r", f"in,path={final},mode=0600,owner=0",
                    sys.executable, "-c", "import socket; socket.socket().bind(('::1',0)) "
                    "if 0 else socket.socket().bind(('127.0.0.1',0))"],
                   check=True, capture_output=True, timeout=30)
    calls = [line.split(" ", 1)[1] for line in log.read_text().splitlines()
             if str(sockdir) in line or "/proc/self/fd/" in line]
    private = re.escape(f"{sockdir}/.unixify-") + r"[0-9a-f]+>"
    order = [r"mkdirat\(\d+<" + re.escape(str(sockdir)) + r">, \".unixify-",
             r"bind\(.*sun_path=\"/proc/self/fd/\d+/s\"",
             r"fchmodat\(\d+<" + private + r", \"s\", 0600\)",
             r"fchownat\(\d+<" + private + r", \"s\", 0, -1, AT_SYMLINK_NOFOLLOW\)",
             r"renameat2\(\d+<" + private + r", \"s\", \d+<" + re.escape(str(sockdir))
             + r">, \"final.sock\", RENAME_NOREPLACE\)"]
    position = 0
    for pattern in order:
        found = next((i for i, c in enumerate(calls[position:], position)
                      if re.search(pattern, c)), None)
        assert found is not None, (pattern, calls)
        position = found + 1
    assert not any(re.search(r"bind\(.*" + re.escape(f'"{final}"'), c) for c in calls), calls
    assert not any(re.search(r"^(chmod|lchown|rename)\(", c) for c in calls), calls


def test_a_chown_not_allowed_is_an_error_at_bind(sockdir: Path) -> None:
    setpriv = require_tool("setpriv")
    if os.geteuid() != 0:
        pytest.skip("needs root to drop CAP_CHOWN selectively")
    code = ("import socket\ntry: socket.socket().bind(('127.0.0.1',0)); print('bound')\n"
            "except OSError as e: print(e.errno)\n")
    result = subprocess.run([setpriv, "--bounding-set=-chown", *unixify_command(), "-r",
                             f"in,path={sockdir}/denied.sock,owner=nobody",
                             sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=20)
    assert result.stdout.strip() == "1", result  # EPERM
    assert f"cannot give {sockdir}/denied.sock to owner" in result.stderr
    assert list(sockdir.iterdir()) == []


def test_stale_file_replaced_live_one_kept(procs: Processes, sockdir: Path) -> None:
    import socket

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sockdir / "s.sock"))
    stale.close()  # a socket file nobody listens on
    listen(procs, [f"in,port=7221,path={sockdir}/s.sock,mode=0604"], 7221)
    assert stat.S_IMODE((sockdir / "s.sock").stat().st_mode) == 0o604
    code = ("import socket\ntry: socket.socket().bind(('127.0.0.1',0)); print('bound')\n"
            "except OSError as e: print(e.errno)\n")
    taken = run_wrapped([f"in,path={sockdir}/s.sock,mode=0666"], [sys.executable, "-c", code])
    assert taken.stdout.strip() == "98", taken  # EADDRINUSE: it is live
    assert stat.S_IMODE((sockdir / "s.sock").stat().st_mode) == 0o604


def test_permission_keywords_in_rules() -> None:
    for text, fragment in [("in,path=/x,mode=0999", "not an octal file mode"),
                           ("in,path=/x,owner=no-such-user-here", "unknown user"),
                           ("in,path=/x,group=no-such-group-here", "unknown group"),
                           ("in,abstract=x,mode=0600", "needs a 'path=' action"),
                           ("out,path=/x,mode=0600", "not to 'out' rules")]:
        bad = subprocess.run([*unixify_command(), "-c", "-r", text], capture_output=True,
                             text=True)
        assert bad.returncode == 1 and fragment in bad.stderr, (text, bad)


def test_mode_without_proc(sockdir: Path) -> None:
    """Without /proc the socket is bound in the private directory by its path, and
    checked there through the directory's fd before its mode is set."""
    unshare = require_tool("unshare")
    final = sockdir / "noproc.sock"
    code = ("import os,socket\ns=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
            f"print(oct(os.stat({str(final)!r}).st_mode))\n")
    wrapped = " ".join(shlex.quote(a) for a in [*unixify_command(), "-r",
                                                  f"in,path={final},mode=0640",
                                                  sys.executable, "-c", code])
    result = subprocess.run([unshare, "--mount", "sh", "-c",
                             f"mount -t tmpfs none /proc && {wrapped}"],
                            capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "0o140640", result
    assert list(sockdir.iterdir()) == []
