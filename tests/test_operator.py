"""What operators see when a bind cannot make its socket file: one line at the default
verbosity naming the path and the error, and users and groups by name."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, require_tool, unixify_command

NOBODY = 65534

# Binds 127.0.0.1:PORT, after dropping to nobody when asked, and prints what it got.
BIND = """
import os, socket, sys
if sys.argv[2] == "drop":
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
try:
    socket.socket().bind(("127.0.0.1", int(sys.argv[1]))); print("bound")
except OSError as e:
    print("errno", e.errno)
"""


def bind_under(rule: str, drop: bool = False, prefix: list[str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), *unixify_command(), "-r", rule, sys.executable,
                           "-c", BIND, str(free_port()), "drop" if drop else "stay"],
                          capture_output=True, text=True, timeout=20)


def one_line_naming(stderr: str, path: Path, error: str) -> None:
    lines = [line for line in stderr.splitlines() if str(path) in line]
    assert len(lines) == 1, stderr
    assert error in lines[0], stderr


def test_missing_directory_is_logged(sockdir: Path) -> None:
    path = sockdir / "missing" / "s.sock"
    result = bind_under(f"in,path={path}")
    assert result.stdout.strip() == "errno 2", result  # ENOENT
    one_line_naming(result.stderr, path, "No such file or directory")


def test_permission_denied_after_dropping_privileges_is_logged(sockdir: Path) -> None:
    """The program binds after setuid(nobody), in a directory only root may write."""
    path = sockdir / "s.sock"
    sockdir.chmod(0o755)
    result = bind_under(f"in,path={path}", drop=True)
    assert result.stdout.strip() == "errno 13", result  # EACCES
    one_line_naming(result.stderr, path, "Permission denied")
    assert not path.exists()


@pytest.mark.parametrize("written", ["names", "numbers"])
def test_owner_and_group_errors_name_them(written: str, sockdir: Path) -> None:
    """A chown the program may not make names the user and group, also when the rule
    gave numbers (resolved by the launcher, never inside the program)."""
    setpriv = require_tool("setpriv")
    if os.geteuid() != 0:
        pytest.skip("needs root to drop CAP_CHOWN selectively")
    user, group = pwd.getpwuid(NOBODY).pw_name, grp.getgrgid(NOBODY).gr_name
    path = sockdir / "o.sock"
    owner = f"owner={user},group={group}" if written == "names" else \
        f"owner={NOBODY},group={NOBODY}"
    result = bind_under(f"in,path={path},{owner}", prefix=[setpriv, "--bounding-set=-chown"])
    assert result.stdout.strip() == "errno 1", result  # EPERM
    one_line_naming(result.stderr, path, "Operation not permitted")
    assert f"owner {user} ({NOBODY}), group {group} ({NOBODY})" in result.stderr
