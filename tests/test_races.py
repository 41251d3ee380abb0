"""Races around socket files: two servers starting at once on one path, and another user
renaming things in directories where root binds and removes socket files."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import (
    HELPERS,
    Processes,
    compile_c,
    free_port,
    parse_kv,
    read_until,
    require_tool,
    run_wrapped,
)


@pytest.fixture(scope="module")
def bindrace(helper_dir: Path) -> str:
    return str(compile_c(HELPERS / "bindrace.c", helper_dir / "bindrace"))


@pytest.mark.parametrize("extra", ["", ",mode=0600"])
@pytest.mark.parametrize("start", ["stale", "fresh"])
def test_two_servers_racing_for_one_path_exactly_one_wins(bindrace: str, sockdir: Path,
                                                          start: str, extra: str) -> None:
    """Trials of two servers binding one path at the same moment (the second 0-200 us
    later), over a stale socket file or none: one binds, the other gets EADDRINUSE, a
    client reaches the one that bound, and no orphaned file is left.  (Over a stale
    file, the old code let both bind or orphaned the winner in about 1 % of trials.)"""
    path = sockdir / "race.sock"
    trials = "1000" if start == "stale" else "500"
    result = run_wrapped([f"in,path={path}{extra}"],
                         [bindrace, "race", trials, str(free_port()), str(path), start],
                         timeout=120)
    counts = parse_kv(result.stdout.replace(" ", "\n"))
    assert counts == {"trials": trials, "both": "0", "none": "0", "wrong": "0", "left": "0"}, \
        result
    assert sorted(p.name for p in sockdir.iterdir()) == [], result


@pytest.mark.parametrize("rule,attack", [
    ("path={shared}/x.sock,mode=0666", "rename"),
    ("path={shared}/x.sock,owner=nobody,group=nogroup", "rename"),
    ("blackhole", "rename"),
    ("path={shared}/sub/x.sock", "flip"),
], ids=["mode", "owner", "blackhole", "removal"])
def test_another_users_renames_change_nothing_outside(
        procs: Processes, bindrace: str, sockdir: Path, rule: str, attack: str) -> None:
    """Another user owns the directory of a root server's socket file (or its $TMPDIR,
    where a blackhole is bound) and, whenever a private directory appears there, renames
    it away and puts a symlink to a root-only directory in its place; or swaps the socket
    file's directory for such a symlink and back, again and again, while the server binds
    and closes.  Binds may fail; nothing outside may change."""
    setpriv = require_tool("setpriv")
    sockdir.chmod(0o755)
    shared, secret = sockdir / "shared", sockdir / "secret"
    (shared / "sub").mkdir(parents=True)
    for owned in (shared, shared / "sub"):
        os.chown(owned, 65534, 65534)
    secret.mkdir(mode=0o700)
    target = secret / ("x.sock" if attack == "flip" else "s")
    target.write_text("root only\n")
    target.chmod(0o600)
    before = target.stat()
    if attack == "flip":  # a crashed server's file to replace: the judging takes a while
        with socket.socket(socket.AF_UNIX) as stale:
            stale.bind(str(shared / "sub" / "x.sock"))
    racer = procs.start([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                         bindrace, attack, str(shared), str(secret), "30"],
                        stdin=subprocess.PIPE)
    read_until(racer, "ready")
    binder = run_wrapped([f"in,{rule.format(shared=shared)}"],
                         [bindrace, "loop", "3", str(free_port()), str(target)], timeout=60,
                         env={**os.environ, "TMPDIR": str(shared)})
    swaps = parse_kv(racer.communicate("", timeout=20)[0])["swaps"]
    after = target.stat() if target.exists() else None
    assert after is not None and target.read_text() == "root only\n", (binder, swaps)
    assert (after.st_ino, stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid) == \
        (before.st_ino, 0o600, before.st_uid, before.st_gid), (binder, swaps)
    assert sorted(p.name for p in secret.iterdir()) == [target.name]
    assert int(swaps) > 0, (binder, swaps)  # the race really ran
    assert int(parse_kv(binder.stdout.replace(" ", "\n"))["binds"]) > 0, binder
