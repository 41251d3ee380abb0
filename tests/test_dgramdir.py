"""The private directories of converted datagram clients under attack by another user
(uid 65534): an $XDG_RUNTIME_DIR they can change, a directory renamed away for a symlink
while the client binds, and entries planted in /tmp for the sweep of stale directories."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    Processes,
    free_port,
    parse_kv,
    read_until,
    require_tool,
    unixify_command,
)

NOBODY = 65534

# Opens COUNT converted sockets one after another, each sending one datagram, and holds
# them all until a line on stdin: their socket files exist meanwhile.
HOLDER = """\
import socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", ("127.0.0.1", port))
    held.append(s)
    time.sleep(0.02)
print("held", flush=True)
sys.stdin.readline()
"""


def as_nobody() -> None:
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


def tree(top: Path) -> list[str]:
    return sorted(str(p.relative_to(top)) for p in top.rglob("*"))


def hold(procs: Processes, sockdir: Path, count: int, env: dict[str, str]) \
        -> subprocess.Popen[str]:
    """A wrapped client holding count converted sockets, once it holds them."""
    port = free_port()
    client = procs.wrapped([f"out,udp,port={port},path={sockdir / 'nobody.sock'}"],
                           [sys.executable, "-c", HOLDER, str(port), str(count)],
                           stdin=subprocess.PIPE, env=env)
    read_until(client, "held", timeout=30)
    return client


def release(client: subprocess.Popen[str]) -> str:
    _, err = client.communicate("\n", timeout=20)
    assert client.returncode == 0, err
    return err


@pytest.fixture
def hostile(sockdir: Path) -> tuple[Path, Path]:
    """shared: a directory another user owns; secret: a root-only one with one file."""
    sockdir.chmod(0o755)
    shared, secret = sockdir / "shared", sockdir / "secret"
    shared.mkdir()
    os.chown(shared, NOBODY, NOBODY)
    secret.mkdir(mode=0o700)
    (secret / "file").write_text("root only\n")
    return shared, secret


@pytest.mark.parametrize("where", ["owned", "inside", "symlink"])
def test_a_runtime_dir_another_user_can_change_is_not_used(
        procs: Processes, sockdir: Path, hostile: tuple[Path, Path], where: str) -> None:
    """$XDG_RUNTIME_DIR owned by another user, a root directory inside one (which they
    can rename), or their symlink to a root-only directory: the private directory goes
    to /tmp instead, with a warning.  (The old code made it there.)"""
    shared, secret = hostile
    if where == "inside":
        (shared / "sub").mkdir()
        runtime = shared / "sub"
    elif where == "symlink":
        (shared / "link").symlink_to(secret)
        runtime = shared / "link"
    else:
        runtime = shared
    client = hold(procs, sockdir, 1, {**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    in_tmp = list(Path("/tmp").glob(f"unixify.{client.pid}.*"))
    made = tree(shared), tree(secret)
    err = release(client)
    assert made == ({"owned": [], "inside": ["sub"], "symlink": ["link"]}[where],
                    ["file"]), err
    assert len(in_tmp) == 1, err
    assert f"XDG_RUNTIME_DIR {runtime}: another user can change it" in err
    assert not in_tmp[0].exists()  # removed at exit


def test_directory_renamed_for_a_symlink_while_binding(
        procs: Processes, bindrace: str, sockdir: Path, hostile: tuple[Path, Path]) -> None:
    """Another user owns $XDG_RUNTIME_DIR and, the moment a private directory appears
    there, renames it away and puts a symlink to a root-only directory in its place,
    while a root client opens socket after socket.  Nothing may appear in the root-only
    directory.  (The old code bound the later sockets there.)"""
    setpriv = require_tool("setpriv")
    shared, secret = hostile
    racer = procs.start([setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                         bindrace, "rename", str(shared), str(secret), "30"],
                        stdin=subprocess.PIPE)
    read_until(racer, "ready")
    client = hold(procs, sockdir, 40, {**os.environ, "XDG_RUNTIME_DIR": str(shared)})
    seen = tree(secret)
    bound = [p.is_socket() for p in Path("/tmp").glob(f"unixify.{client.pid}.*/*")]
    release(client)
    swaps = parse_kv(racer.communicate("", timeout=20)[0])["swaps"]
    assert seen == ["file"], swaps
    assert bound == [True] * 40  # the client really bound them
    assert tree(secret) == ["file"]
    assert (secret / "file").read_text() == "root only\n"


def stale_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))


@pytest.fixture
def planted() -> Iterator[Path]:
    """A root-only directory for planted entries in /tmp to lead to; the planted entries
    (named unixify.*.<tag>) go when the test ends."""
    tag = uuid.uuid4().hex[:8]
    secret = Path(f"/tmp/ufy-secret-{tag}")
    secret.mkdir(mode=0o700)
    yield secret
    subprocess.run(["rm", "-rf", str(secret), *map(str, Path("/tmp").glob(f"unixify.*{tag}"))],
                   check=False)


def test_sweep_leaves_what_another_user_planted_in_tmp(procs: Processes, sockdir: Path,
                                                       planted: Path) -> None:
    """Entries in /tmp named like the private directories of dead processes, planted by
    another user: a symlink to a root-only directory with a stale socket file in it, their
    own directory holding a stale socket file of root's and a symlink to one, their own
    empty directory.  The sweep run by the next client removes none of it, only a stale
    directory that really is root's."""
    secret, tag = planted, planted.name.rsplit("-", 1)[1]
    dead = int(subprocess.run(["sh", "-c", "echo $$"], capture_output=True,
                              text=True).stdout)
    tmp = Path("/tmp")
    stale_socket(secret / f"{dead}.0")
    (secret / "file").write_text("root only\n")

    def plant() -> None:
        as_nobody()
        os.symlink(secret, tmp / f"unixify.{dead}.lnk{tag}")
        for name in (f"unixify.{dead}.own{tag}", f"unixify.{dead}.empty{tag}"):
            os.mkdir(tmp / name, 0o700)
        os.symlink(secret / f"{dead}.0", tmp / f"unixify.{dead}.own{tag}" / f"{dead}.1")

    subprocess.run(["/bin/true"], preexec_fn=plant, check=True)
    own = tmp / f"unixify.{dead}.own{tag}"
    stale_socket(own / f"{dead}.2")                      # root's, in their directory
    ours = tmp / f"unixify.{dead}.root{tag}"              # a root client's, killed
    ours.mkdir(mode=0o700)
    stale_socket(ours / f"{dead}.0")
    before = {p: tree(p) for p in (secret, own, tmp / f"unixify.{dead}.empty{tag}")}
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    release(hold(procs, sockdir, 1, env))
    assert {p: tree(p) for p in before} == before
    assert (tmp / f"unixify.{dead}.lnk{tag}").is_symlink()
    assert not ours.exists()  # the sweep did run


# A tmpfs of nobody's on /tmp; a shim under the old /tmp (a sanitizer build) is copied
# to its place there from the old /tmp, still the working directory.
MOUNT_HOSTILE_TMP = """\
cd /tmp && mount -t tmpfs -o uid=65534,mode=1777 ufy /tmp || exit 1
for f in $UNIXIFY_SHIM; do
    case $f in /tmp/*) mkdir -p "${f%/*}" && cp "./${f#/tmp/}" "$f" || exit 1;; esac
done
cd / && exec "$@"
"""


def test_no_trusted_base_fails_closed() -> None:
    """/tmp owned by another user (a tmpfs of theirs, in a mount namespace of the test's
    own) and no usable $XDG_RUNTIME_DIR: the client's send fails with EACCES and a log
    line, its socket stays unbound.  (The old code made its directory there.)"""
    unshare = require_tool("unshare")
    code = ("import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "try:\n"
            "    s.sendto(b'x', ('127.0.0.1', 9)); print('sent')\n"
            "except OSError as e:\n"
            "    print('errno', e.errno)\n"
            "print('port', s.getsockname()[1])\n")
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    result = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c",
         MOUNT_HOSTILE_TMP, "sh",
         *unixify_command(), "-r", "out,udp,port=9,path=/tmp/x.sock", "--",
         sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30, env=env, cwd="/")
    assert result.stdout.split() == ["errno", str(errno.EACCES), "port", "0"], result
    assert "/tmp: another user can change it or a directory on its way" in result.stderr
