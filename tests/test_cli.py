"""The unixify command line: ip2unix-compatible options, messages, exit codes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import unixify_command


def unixify(*args: str, env: dict[str, str] | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(unixify_command() + list(args), capture_output=True, text=True,
                          timeout=30, env=env, cwd=cwd)


def test_version_and_help() -> None:
    assert unixify("--version").stdout.startswith("unixify ")
    result = unixify("-h")
    assert result.returncode == 0 and "usage: unixify" in result.stdout


def test_lib_prints_an_existing_shared_library() -> None:
    path = unixify("--lib").stdout.strip()
    assert os.path.isabs(path) and Path(path).read_bytes()[:4] == b"\x7fELF"


def test_check_and_print_table() -> None:
    result = unixify("-c", "-p", "-r", "in,tcp,port=80,path=/run/web.sock",
                     "-r", "out,addr=10.0.0.0/8,reject=ECONNREFUSED")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["#", "dir", "type", "match", "action"]
    assert lines[1].split() == ["1", "in", "tcp", "port=80", "path", "/run/web.sock"]
    assert "reject with ECONNREFUSED" in lines[2]
    assert result.stderr == ""


def test_print_goes_to_stderr_when_running() -> None:
    result = unixify("-p", "-r", "in,path=/tmp/x", "true")
    assert result.returncode == 0
    assert "path /tmp/x" in result.stderr and result.stdout == ""


def test_exit_code_is_the_programs() -> None:
    assert unixify("-r", "in,path=/tmp/x", "sh", "-c", "exit 7").returncode == 7


def test_options_stop_at_the_program() -> None:
    result = unixify("-r", "in,path=/tmp/x", "echo", "-r", "-c", "--version")
    assert result.stdout == "-r -c --version\n"
    result = unixify("-r", "in,path=/tmp/x", "--", "echo", "-v")
    assert result.stdout == "-v\n"


def test_existing_ld_preload_is_kept(tmp_path: Path) -> None:
    env = dict(os.environ, LD_PRELOAD="libc.so.6")
    result = unixify("-r", "in,path=/tmp/x", "sh", "-c", 'echo "$LD_PRELOAD"', env=env)
    lib = unixify("--lib").stdout.strip()
    assert result.stdout.split() == [lib, "libc.so.6"]


def test_rule_files_mix_with_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.write_text("# comment\n\n  in,port=80,path=web.sock\n")
    result = unixify("-c", "-p", "-f", str(rules), "-r", "out,ignore", cwd=str(tmp_path))
    assert result.returncode == 0
    assert f"path {tmp_path}/web.sock" in result.stdout
    assert "ignore" in result.stdout


@pytest.mark.parametrize("args,fragment", [
    (["-r", "in,,path=/x", "true"], "-r #1, column 4: empty option"),
    (["-r", "in,path=/x", "-r", "in,port=99999,path=/x", "true"], "-r #2, column 4"),
    (["-r", "reject=EBOGUS", "true"], "unknown errno name 'EBOGUS'"),
    (["-r", "reject=70000", "true"], "out of range"),
    (["-r", "path=", "true"], "needs a value"),
    (["-r", "out,blackhole", "true"], "only to 'in'"),
    (["-r", "in,ignore,noremove", "true"], "needs a 'path='"),
    (["-r", "in,path=/a,ignore", "true"], "conflicting actions"),
    (["-f", "/nonexistent/rules", "true"], "cannot read rule file '/nonexistent/rules'"),
    (["true"], "no rules given"),
    (["-r", "in,path=/x"], "no program to run"),
    (["-x", "-r", "in,path=/x", "true"], "option -x not recognized"),
    (["-c", "-r", "in,path=/x", "true"], "takes no program"),
])
def test_bad_input_is_one_line_and_exit_1(args: list[str], fragment: str) -> None:
    result = unixify(*args)
    assert result.returncode == 1, result
    assert result.stderr.startswith("unixify: ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_rule_in_file_names_file_and_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.write_text("in,path=/x\n\nout,port=1-0,ignore\n")
    result = unixify("-f", str(rules), "true")
    assert result.returncode == 1
    assert f"{rules}:3, column 5: port range '1-0' is reversed" in result.stderr


def test_missing_program() -> None:
    result = unixify("-r", "in,path=/x", "no-such-program-here")
    assert result.returncode == 127
    assert result.stderr == "unixify: no-such-program-here: command not found\n"


# How each command that reads rules takes them: before the rules, after them.
RULE_COMMANDS = {"check": ([b"-c"], []), "run": ([], [b"true"]), "env": ([b"env"], []),
                 "explain": ([b"explain"], [b"out", b"tcp", b"unix", b"/run/x"])}


@pytest.mark.parametrize("command", sorted(RULE_COMMANDS))
@pytest.mark.parametrize("rule,column", [
    (b"in,systemd=\xff", 12), (b"out,from-unix=/run/\xfe*,path=/x", 20),
    (b"out,from-abstract=a\xc3,abstract=b", 20), (b"in,path=/tmp/\x80", 14),
])
def test_rule_that_is_not_utf8_is_one_line_everywhere(command: str, rule: bytes,
                                                      column: int) -> None:
    """argv bytes that are not UTF-8 cannot reach the shim's environment: every command
    says so in one line (it was a UnicodeEncodeError traceback, and -c said valid)."""
    before, after = RULE_COMMANDS[command]
    args = [os.fsencode(a) for a in unixify_command()] + before + [b"-r", rule] + after
    result = subprocess.run(args, capture_output=True, timeout=30)
    stderr = result.stderr.decode()
    assert result.returncode == 1, result
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert f"-r #1, column {column}: byte 0x{rule[column - 1]:02x} is not valid UTF-8" \
        in stderr, stderr


@pytest.mark.parametrize("command", sorted(RULE_COMMANDS))
def test_nul_in_rule_file_is_one_line_everywhere(command: str, tmp_path: Path) -> None:
    """A NUL cannot go into an environment string: it was 'ValueError: embedded null
    byte' at exec, and -c said valid."""
    rules = tmp_path / "rules"
    rules.write_bytes(b"# ok\nin,path=/tmp/a\0b\n")
    before, after = RULE_COMMANDS[command]
    args = [*before, b"-f", os.fsencode(rules), *after]
    result = unixify(*(os.fsdecode(a) for a in args))
    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result
    assert f"{rules}:2, column 15: NUL character in 'in,path=/tmp/a\\x00b'" in result.stderr
