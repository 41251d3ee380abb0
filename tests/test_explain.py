"""`unixify explain` and the from-unix glob, checked against the shim's own matching."""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
from conftest import HELPERS, compile_c, preloaded_env, run_wrapped, unixify_command
from hypothesis import given, settings
from hypothesis import strategies as st

from unixify.explain import (
    DSTAR,
    DSTAR_SLASH,
    STAR,
    Query,
    explain,
    glob_elements,
    glob_matches,
    parse_query,
)
from unixify.rules import GLOB_MAX, RuleError, parse_rule

GLOB_CASES = [
    ("/run/app.sock", "/run/app.sock", True),
    ("/run/*.sock", "/run/app.sock", True),
    ("/run/*.sock", "/run/sub/app.sock", False),
    ("/run/**.sock", "/run/sub/app.sock", True),
    ("/run/**/app.sock", "/run/app.sock", True),
    ("/run/**/app.sock", "/run/a/b/app.sock", True),
    ("/run/app?.sock", "/run/app1.sock", True),
    ("/run/app?.sock", "/run/app.sock", False),
    ("/run/?x", "/run//x", False),
    ("/run/app[0-9].sock", "/run/app7.sock", True),
    ("/run/app[!0-9].sock", "/run/app7.sock", False),
    ("/run/app[!0-9].sock", "/run/appx.sock", True),
    ("/run/a[]]b", "/run/a]b", True),
    ("/run/\\*.sock", "/run/*.sock", True),
    ("/run/\\*.sock", "/run/x.sock", False),
    ("/run/[ab", "/run/[ab", True),
    ("app.sock", "/var/run/app.sock", True),      # no '/': the basename
    ("app.sock", "/var/run/app.sock.old", False),
    ("*.sock", "/var/run/app.sock", True),
    ("/run/**/", "/run/", True),
    ("/a/**/**/y", "/a/y", True),
    ("/a/**/y", "/ab/y", False),
    ("/a/**y", "/a/b/xy", True),
    ("**", "/any/thing", True),
    ("/run/[z-a]", "/run/m", False),              # a reversed range holds nothing
    ("/run/[]-a]", "/run/^", True),
    ("/run/[a-]]", "/run/-]", True),
    ("/run/?", "/run/\u00e9", False),             # globs match bytes, as the shim does
    ("/run/??", "/run/\u00e9", True),
    ("/run/[\u00e9]", "/run/\u00e9", False),
    ("**/**/**/**/**/**/**/**/y", "/" * 98 + "x", False),
    ("*a*a*a*a*a*a*a*ab", "a" * 100, False),
    ("*a*a*a*a*a*a*a*ab", "a" * 99 + "b", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), GLOB_CASES)
def test_glob(pattern: str, path: str, expected: bool) -> None:
    assert glob_matches(pattern, path) is expected


@pytest.mark.parametrize(("pattern", "path", "expected"), GLOB_CASES)
def test_shim_glob_agrees(pattern: str, path: str, expected: bool) -> None:
    """The shim's C matcher decides the same: a matching connect is rejected with
    EPROTONOSUPPORT, any other fails as a connect to a missing file does."""
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX)\n"
            "try: s.connect(sys.argv[1])\n"
            "except OSError as e: print(e.errno)\n")
    result = run_wrapped([f"out,from-unix={pattern},reject=EPROTONOSUPPORT"],
                         [sys.executable, "-c", code, path])
    want = errno.EPROTONOSUPPORT if expected else errno.ENOENT
    assert result.stdout.strip() == str(want), result


def test_pathological_globs_in_explain_finish() -> None:
    """Backtracking took minutes here; the matcher is linear now (the timeout only
    detects a hang)."""
    for pattern, path in [("**/**/**/**/**/**/**/**/y", "/a" * 49 + "/x"),
                          ("*a*a*a*a*a*a*a*ab", "/" + "a" * 99)]:
        result = subprocess.run([*unixify_command(), "explain", "-r",
                                 f"out,from-unix={pattern},path=/tmp/y", "out", "tcp",
                                 "unix", path], capture_output=True, text=True, timeout=10)
        assert result.stdout.endswith("=> no rule matches: connect() goes ahead unchanged "
                                      "on the Unix socket\n"), result


@pytest.fixture(scope="module")
def c_glob(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str, str], bool]]:
    """The shim's glob.c, compiled into a helper that answers pattern/path queries."""
    source = Path(__file__).parent.parent / "src" / "shim" / "glob.c"
    binary = compile_c(HELPERS / "globmatch.c", tmp_path_factory.mktemp("glob") / "glob",
                       extra=["-D_GNU_SOURCE", str(source)])
    proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def match(pattern: str, path: str) -> bool:
        stdin.write(os.fsencode(pattern) + b"\0" + os.fsencode(path) + b"\0")
        stdin.flush()
        ready, _, _ = select.select([stdout], [], [], 10)  # a hang detector only
        assert ready, f"glob.c took over 10 s on {pattern!r} {path!r}"
        return {b"1": True, b"0": False}[stdout.read(1)]

    yield match
    stdin.close()
    proc.kill()
    proc.wait(timeout=10)


def backtracking_match(pattern: str, path: str) -> bool:
    """A plain backtracking matcher over the same elements: exponential, but obviously
    right, for checking the automaton on small inputs."""
    elements = glob_elements(pattern)
    raw = os.fsencode(path if "/" in pattern else path.rsplit("/", 1)[-1])

    def at(k: int, j: int) -> bool:
        if k == len(elements):
            return j == len(raw)
        kind = elements[k].kind
        if kind == DSTAR:
            return any(at(k + 1, i) for i in range(j, len(raw) + 1))
        if kind == STAR:
            end = raw.find(b"/", j)
            return any(at(k + 1, i) for i in range(j, (len(raw) if end < 0 else end) + 1))
        if kind == DSTAR_SLASH:
            return at(k + 1, j) or any(raw[i - 1] == ord("/") and at(k + 1, i)
                                       for i in range(j + 1, len(raw) + 1))
        return j < len(raw) and raw[j] in elements[k].accepts and at(k + 1, j + 1)

    return at(0, 0)


GLOB_PIECES = st.sampled_from(["*", "**", "**/", "?", "/", "a", "b", "[", "]", "!", "-",
                               "\\", "\u00e9", "[a-b]", "[!a]"])
PATH_PIECES = st.sampled_from(["a", "b", "/", "\u00e9", "[", "]", "-", "!", "\\", "*"])


@settings(max_examples=600, deadline=None)
@given(st.lists(GLOB_PIECES, max_size=8).map("".join),
       st.lists(PATH_PIECES, max_size=10).map("".join))
def test_glob_matchers_agree(c_glob: Callable[[str, str], bool], pattern: str,
                             path: str) -> None:
    """The shim's matcher, explain's and a backtracking one decide alike."""
    expected = backtracking_match(pattern, path)
    assert glob_matches(pattern, path) is expected
    assert c_glob(pattern, path) is expected


@settings(max_examples=100, deadline=None)
@given(st.lists(GLOB_PIECES, min_size=20, max_size=80).map("".join),
       st.lists(PATH_PIECES, min_size=50, max_size=107).map("".join))
def test_long_globs_agree(c_glob: Callable[[str, str], bool], pattern: str,
                          path: str) -> None:
    assert c_glob(pattern, path) is glob_matches(pattern, path)


def test_glob_length_limit(c_glob: Callable[[str, str], bool]) -> None:
    """Patterns are bounded (the shim's state sets are on its stack): the parser refuses
    longer ones, and the shim matches nothing with one."""
    longest = "*" * GLOB_MAX
    assert parse_rule(f"from-unix={longest},ignore").from_unix == longest
    assert c_glob(longest, "/x")
    with pytest.raises(RuleError, match=f"at most {GLOB_MAX}"):
        parse_rule(f"from-unix={longest}*,ignore")
    assert not c_glob(longest + "*", "/x")
    # an encoding made by hand with a longer one is malformed, as a whole
    for pattern, malformed in ((longest, False), (longest + "*", True)):
        env = preloaded_env(UNIXIFY_RULES=f"UFY1{{A1:Iu{len(pattern)}:{pattern}}}")
        result = subprocess.run([sys.executable, "-c", "import socket"], env=env,
                                capture_output=True, text=True, timeout=30)
        assert ("UNIXIFY_RULES is malformed" in result.stderr) is malformed, result


RULES = ["out,port=53,ignore", "out,tcp,path=/run/%t-%p.sock",
         "in,addr=1.2.3.0/24,path=/run/another.socket", "in,port=80,reject=EADDRINUSE",
         "in,tcp,port=22,systemd=ssh", "in,from-unix=/run/**/app?.sock,abstract=app-%t",
         "in,udp,blackhole"]


@pytest.mark.parametrize(("words", "verdict"), [
    ("out tcp 10.0.0.1 80", "=> connect() goes to Unix socket file /run/tcp-80.sock"),
    ("out udp 10.0.0.1 53", "=> the rule says ignore: connect()/sendto() goes ahead "
                            "unchanged on the IP socket"),
    ("out udp 10.0.0.1 54", "=> no rule matches: connect()/sendto() goes ahead unchanged "
                            "on the IP socket"),
    ("in tcp 1.2.3.4 8080", "=> bind() binds a Unix stream socket at Unix socket file "
                            "/run/another.socket"),
    ("in tcp ::ffff:1.2.3.9 1", "=> bind() binds a Unix stream socket at Unix socket file "
                                "/run/another.socket"),
    ("in tcp ::1 80", "=> bind() fails with EADDRINUSE (98)"),
    ("in tcp 0.0.0.0 22", "=> bind() takes the stream socket named 'ssh' passed by systemd "
                          "(LISTEN_FDS)"),
    ("in udp unix /run/x/app1.sock", "=> bind() binds a Unix dgram socket at abstract "
                                     "@app-udp"),
    ("in udp 0.0.0.0 5000", "=> bind() succeeds on a Unix socket nobody can reach"),
    ("out tcp unix /run/app1.sock", "=> no rule matches: connect() goes ahead unchanged "
                                    "on the Unix socket"),
])
def test_explain_verdicts(words: str, verdict: str) -> None:
    rules = [parse_rule(text) for text in RULES]
    text = explain(rules, parse_query(words.split()))
    assert text.splitlines()[-1] == verdict, text


def test_explain_says_why_earlier_rules_did_not_match() -> None:
    rules = [parse_rule(text) for text in RULES]
    text = explain(rules, Query("in", "stream", ipaddress.ip_address("::1"), 22))
    assert "rule 1 'out,port=53,ignore': no, it is for 'out' only" in text
    assert "rule 3 'in,addr=1.2.3.0/24,path=/run/another.socket': no, address ::1 is not " \
           "in 1.2.3.0/24" in text
    assert "rule 4 'in,port=80,reject=EADDRINUSE': no, port 22 is not 80" in text


def test_explain_command_line(tmp_path: os.PathLike[str]) -> None:
    command = unixify_command()
    ok = subprocess.run([*command, "explain", "-r", "in,port=80,path=/run/web.sock", "--",
                         "in", "tcp", "127.0.0.1", "80"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.endswith(
        "=> bind() binds a Unix stream socket at Unix socket file /run/web.sock\n"), ok
    for words, fragment in [(["in", "tcp", "1.2.3", "80"], "'1.2.3' is not an IP address"),
                            (["in", "tcp", "::1", "70000"], "port '70000' is not a number"),
                            (["sideways", "tcp", "::1", "1"], "'sideways' is not 'in'"),
                            (["in", "sctp", "::1", "1"], "'sctp' is not 'tcp' or 'udp'"),
                            (["in", "tcp"], "expected: in|out")]:
        bad = subprocess.run([*command, "explain", "-r", "path=/x", *words],
                             capture_output=True, text=True)
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad
        assert fragment in bad.stderr and "Traceback" not in bad.stderr, bad
    bad_rule = subprocess.run([*command, "explain", "-r", "in,port=x,path=/x", "in", "tcp",
                               "::1", "1"], capture_output=True, text=True)
    assert bad_rule.returncode == 1 and "column" in bad_rule.stderr
