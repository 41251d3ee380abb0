"""Programs the preload cannot reach are never run unconverted: Go programs and static
ones go to the seccomp back end (refused with --backend=preload), programs exec() starts
in secure-execution mode (set-id, capabilities) are refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    HELPERS,
    compile_c,
    free_port,
    go_build,
    preloaded_env,
    require_tool,
    run_wrapped,
    tcp_port_open,
    unixify_command,
)

from unixify.reach import elf_facts
from unixify.shim import LIBRARY_NAME, library_path

NOBODY = 65534


@pytest.fixture(scope="module")
def go_programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """tests/helpers/tcp_server.go built with cgo (dynamically linked: the default for a
    net program when a C compiler is present) and without (static)."""
    built = go_build(HELPERS / "tcp_server.go", tmp_path_factory.mktemp("go"),
                     {"dynamic": "1", "static": "0"})
    facts = elf_facts(built["dynamic"]), elf_facts(built["static"])
    assert facts[0] is not None and facts[0].dynamic and facts[0].go, facts
    assert facts[1] is not None and not facts[1].dynamic, facts
    return built


def assert_refused(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr.startswith("unixify: ") and result.stderr.count("\n") == 1, result
    assert fragment in result.stderr, result
    assert "would open unconverted" in result.stderr
    assert result.stdout == "", result


def test_dynamic_go_program_is_refused(go_programs: dict[str, str], tmp_path: Path) -> None:
    """It made its real TCP port, with no word even at -vv."""
    port = free_port()
    result = run_wrapped([f"in,path={tmp_path}/s"],
                         [go_programs["dynamic"], f"127.0.0.1:{port}"], verbose=2,
                         backend="preload")
    assert_refused(result, f"{go_programs['dynamic']} is a Go program")
    assert not tcp_port_open(port)


def test_static_go_program_is_refused(go_programs: dict[str, str], tmp_path: Path) -> None:
    result = run_wrapped([f"in,path={tmp_path}/s"],
                         [go_programs["static"], f"127.0.0.1:{free_port()}"],
                         backend="preload")
    assert_refused(result, f"{go_programs['static']} is statically linked")


def test_go_program_behind_a_script_is_refused(go_programs: dict[str, str],
                                               tmp_path: Path) -> None:
    """A script's interpreter is what runs; '#!/usr/bin/env NAME' runs NAME from PATH."""
    shutil.copy(go_programs["dynamic"], tmp_path / "goserver")
    script = tmp_path / "serve"
    script.write_text("#!/usr/bin/env goserver\n")
    script.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    result = run_wrapped([f"in,path={tmp_path}/s"], ["serve", "127.0.0.1:0"], env=env,
                         backend="preload")
    assert_refused(result, f"{script} runs /usr/bin/env, which runs {tmp_path}/goserver, "
                           "which is a Go program")
    direct = tmp_path / "direct"
    direct.write_text(f"#!{go_programs['dynamic']}\n")
    direct.chmod(0o755)
    result = run_wrapped([f"in,path={tmp_path}/s"], [str(direct), "127.0.0.1:0"],
                         backend="preload")
    assert_refused(result, f"{direct} runs {go_programs['dynamic']}, which is a Go program")


def test_go_program_in_explain(go_programs: dict[str, str]) -> None:
    """explain --program says a Go program runs under the seccomp back end."""
    base = [*unixify_command(), "explain", "-r", "in,path=/tmp/x"]
    query = ["in", "tcp", "0.0.0.0", "80"]
    result = subprocess.run([*base, "--program", go_programs["dynamic"], *query],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[0] == (
        f"({go_programs['dynamic']}: runs under the seccomp back end: it is a Go "
        "program)"), result
    assert result.stdout.splitlines()[-1].startswith("=> bind() binds"), result
    plain = subprocess.run([*base, *query], capture_output=True, text=True, timeout=30)
    assert plain.stdout.startswith("(as in a program the preload reaches: dynamically "
                                   "linked"), plain
    reached = subprocess.run([*base, "--program", "true", *query], capture_output=True,
                             text=True, timeout=30)
    assert reached.stdout.splitlines()[-1].startswith("=> bind() binds"), reached


@pytest.fixture(scope="module")
def secure_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/helpers/secure.c: prints secure=AT_SECURE preloaded=0|1."""
    return compile_c(HELPERS / "secure.c", tmp_path_factory.mktemp("secure") / "secure")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user can enter, on a mount that honours set-id bits."""
    path = Path(tempfile.mkdtemp(prefix="ufy-reach-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def installed(source: Path, directory: Path, uid: int, gid: int, mode: int) -> str:
    target = directory / "program"
    shutil.copy(source, target)
    os.chown(target, uid, gid)
    target.chmod(mode)
    return str(target)


# The launcher as another user: everything it imports is loaded before the switch, since
# this interpreter's files may be unreadable to that user.
AS_USER = """\
import os, struct, sys
import unixify.cli, unixify.shim
unixify.shim.library_path()
uid, gid = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
sys.exit(unixify.cli.main(sys.argv[3:]))
"""


def shim_copy(directory: str, mode: int) -> str:
    """The preload list with our library copied into directory (a sanitizer runtime
    before it, as UNIXIFY_SHIM may name, stays where it is)."""
    *before, ours = library_path().split()
    copy = os.path.join(directory, LIBRARY_NAME)
    shutil.copy(ours, copy)
    os.chmod(copy, mode)
    return " ".join([*before, copy])


def launcher(program: str, uid: int = 0, gid: int = 0,
             shim: str | None = None) -> subprocess.CompletedProcess[str]:
    """The launcher run by uid/gid.  Another user gets a copy of the shim beside the
    program (the installed one may sit where only root can read, as under /root)."""
    env = dict(os.environ)
    if shim is None and uid != 0:
        shim = shim_copy(os.path.dirname(program), 0o755)
    if shim is not None:
        env["UNIXIFY_SHIM"] = shim
    return subprocess.run([sys.executable, "-c", AS_USER, str(uid), str(gid), "-r",
                           "in,path=/tmp/unused.sock", program], capture_output=True,
                          text=True, timeout=30, env=env)


def by_hand(program: str, uid: int = 0, gid: int = 0) -> str:
    """What program reports when preloaded without the launcher, run by uid/gid."""
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                           program], env=preloaded_env(), capture_output=True, text=True,
                          timeout=30, check=True).stdout


def test_setuid_program_of_another_user_is_refused(secure_probe: Path,
                                                   shared_dir: Path) -> None:
    require_tool("setpriv")
    program = installed(secure_probe, shared_dir, NOBODY, NOBODY, 0o4755)
    assert by_hand(program) == "secure=1 preloaded=0\n"  # the linker dropped the preload
    assert_refused(launcher(program), f"{program} is set-user-ID to uid {NOBODY}")
    # its owner runs it in normal mode, so the preload reaches it
    assert launcher(program, NOBODY, NOBODY).stdout == "secure=0 preloaded=1\n"


def test_preload_the_user_cannot_read_is_refused(secure_probe: Path,
                                                 shared_dir: Path) -> None:
    """ld.so would skip an unreadable preload with a warning and run the program
    unconverted: the launcher refuses instead, with one line."""
    program = installed(secure_probe, shared_dir, 0, 0, 0o755)
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    shim = private / LIBRARY_NAME
    result = launcher(program, NOBODY, NOBODY, shim=shim_copy(str(private), 0o644))
    assert (result.returncode, result.stdout) == (1, ""), result
    assert result.stderr == (f"unixify: the preload library {shim} cannot be read by uid "
                             f"{NOBODY} (Permission denied); the program would run "
                             "unconverted\n"), result


def test_setgid_program_of_another_group_is_refused(secure_probe: Path,
                                                    shared_dir: Path) -> None:
    require_tool("setpriv")
    program = installed(secure_probe, shared_dir, 0, NOBODY, 0o2755)
    assert by_hand(program) == "secure=1 preloaded=0\n"
    assert_refused(launcher(program), f"{program} is set-group-ID to gid {NOBODY}")
    assert launcher(program, 0, NOBODY).stdout == "secure=0 preloaded=1\n"


def test_program_with_file_capabilities_is_refused_for_other_users(
        secure_probe: Path, shared_dir: Path) -> None:
    setcap = require_tool("setcap")
    require_tool("setpriv")
    program = installed(secure_probe, shared_dir, 0, 0, 0o755)
    subprocess.run([setcap, "cap_net_bind_service+ep", program], check=True, timeout=30)
    assert by_hand(program, NOBODY, NOBODY) == "secure=1 preloaded=0\n"
    assert_refused(launcher(program, NOBODY, NOBODY),
                   f"{program} has file capabilities that exec would grant")
    # root gains nothing it lacks: no secure mode, the preload reaches it
    assert launcher(program).stdout == "secure=0 preloaded=1\n"


def test_setuid_bits_on_a_nosuid_mount_count_for_nothing(secure_probe: Path,
                                                          shared_dir: Path) -> None:
    """The kernel ignores set-id bits there, so exec is not secure: no refusal."""
    unshare = require_tool("unshare")
    script = ('mount -t tmpfs -o nosuid,mode=0755 tmpfs "$1" && cp "$2" "$1/program" && '
              'chown 65534:65534 "$1/program" && chmod 4755 "$1/program" && shift 2 && '
              'exec "$@" -r in,path=/tmp/unused.sock "$0/program"')
    result = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c",
                             script, str(shared_dir), str(shared_dir), str(secure_probe),
                             *unixify_command()], capture_output=True, text=True,
                            timeout=30)
    assert result.stdout == "secure=0 preloaded=1\n", result


def test_go_program_without_section_headers_is_recognised(go_programs: dict[str, str],
                                                          tmp_path: Path) -> None:
    """With the section header table gone, the build-info magic still gives it away."""
    data = bytearray(Path(go_programs["dynamic"]).read_bytes())
    data[0x28:0x30] = bytes(8)        # e_shoff
    data[0x3C:0x40] = bytes(4)        # e_shnum, e_shstrndx
    stripped = tmp_path / "stripped"
    stripped.write_bytes(bytes(data))
    stripped.chmod(0o755)
    assert elf_facts(str(stripped)) == (True, True)
    assert_refused(run_wrapped([f"in,path={tmp_path}/s"], [str(stripped), "127.0.0.1:0"],
                               backend="preload"), "is a Go program")
