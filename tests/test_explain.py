"""`unixify explain` and the from-unix glob, checked against the shim's own matching."""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Union

import pytest
from conftest import (
    HELPERS,
    compile_c,
    preloaded_env,
    require_tool,
    run_wrapped,
    unixify_command,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from unixify.explain import Query, explain, match, parse_query
from unixify.rules import GLOB_MAX, Rule, RuleError, parse_rule
from unixify.shim import matcher_path

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


def glob_matches(pattern: str, path: str) -> bool:
    """explain's answer: does a from-unix rule with pattern match a socket at path?"""
    return match([Rule("ignore", from_unix=pattern)], Query("out", "stream",
                                                             unix_path=path)).first == 0


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


# The elements of a glob (glob.c's syntax), for the backtracking matcher below.
LITERAL, STAR, DSTAR, DSTAR_SLASH = range(4)
ALL_BUT_SLASH = frozenset(range(256)) - {ord("/")}


def class_end(pattern: bytes, start: int) -> int:
    """Index just past the ']' closing the bracket expression at start, or -1."""
    i = start + 1
    if pattern[i:i + 1] == b"!":
        i += 1
    first = True
    while i < len(pattern) and (first or pattern[i:i + 1] != b"]"):
        i += 2 if pattern[i:i + 1] == b"\\" and i + 1 < len(pattern) else 1
        first = False
    return i + 1 if i < len(pattern) else -1


def class_bytes(body: bytes) -> frozenset[int]:
    """The bytes the bracket expression [body] matches ('/' never)."""
    negate = body.startswith(b"!")
    body = body[1:] if negate else body
    members: set[int] = set()
    i = 0
    while i < len(body):
        i += body[i] == ord("\\") and i + 1 < len(body)
        low = high = body[i]
        i += 1
        if i + 1 < len(body) and body[i] == ord("-"):
            i += 1 + (body[i + 1] == ord("\\") and i + 2 < len(body))
            high = body[i]
            i += 1
        members.update(range(low, high + 1))
    return (ALL_BUT_SLASH - members) if negate else frozenset(members) & ALL_BUT_SLASH


def glob_elements(pattern: str) -> list[tuple[int, frozenset[int]]]:
    """The pattern's elements: a kind, and the bytes a one-byte element accepts."""
    raw, i = os.fsencode(pattern), 0
    elements: list[tuple[int, frozenset[int]]] = []
    while i < len(raw):
        for prefix, kind in ((b"**/", DSTAR_SLASH), (b"**", DSTAR), (b"*", STAR)):
            if raw.startswith(prefix, i):
                elements.append((kind, frozenset()))
                i += len(prefix)
                break
        else:
            if raw.startswith(b"?", i):
                elements.append((LITERAL, ALL_BUT_SLASH))
                i += 1
            elif raw.startswith(b"[", i) and (end := class_end(raw, i)) > 0:
                elements.append((LITERAL, class_bytes(raw[i + 1:end - 1])))
                i = end
            else:
                i += raw.startswith(b"\\", i) and i + 1 < len(raw)
                elements.append((LITERAL, frozenset((raw[i],))))
                i += 1
    return elements


def backtracking_match(pattern: str, path: str) -> bool:
    """A plain backtracking matcher: exponential, but obviously right, for checking the
    shim's automaton on small inputs."""
    elements = glob_elements(pattern)
    raw = os.fsencode(path if "/" in pattern else path.rsplit("/", 1)[-1])

    def at(k: int, j: int) -> bool:
        if k == len(elements):
            return j == len(raw)
        kind, accepts = elements[k]
        if kind == DSTAR:
            return any(at(k + 1, i) for i in range(j, len(raw) + 1))
        if kind == STAR:
            end = raw.find(b"/", j)
            return any(at(k + 1, i) for i in range(j, (len(raw) if end < 0 else end) + 1))
        if kind == DSTAR_SLASH:
            return at(k + 1, j) or any(raw[i - 1] == ord("/") and at(k + 1, i)
                                       for i in range(j + 1, len(raw) + 1))
        return j < len(raw) and raw[j] in accepts and at(k + 1, j + 1)

    return at(0, 0)


GLOB_PIECES = st.sampled_from(["*", "**", "**/", "?", "/", "a", "b", "[", "]", "!", "-",
                               "\\", "\u00e9", "[a-b]", "[!a]"])
PATH_PIECES = st.sampled_from(["a", "b", "/", "\u00e9", "[", "]", "-", "!", "\\", "*"])


@settings(max_examples=600, deadline=None)
@given(st.lists(GLOB_PIECES, max_size=8).map("".join),
       st.lists(PATH_PIECES, max_size=10).map("".join))
def test_glob_matchers_agree(c_glob: Callable[[str, str], bool], pattern: str,
                             path: str) -> None:
    """The shim's matcher (through explain, and glob.c alone) and a backtracking one
    decide alike."""
    expected = backtracking_match(pattern, path)
    assert glob_matches(pattern, path) is expected
    assert c_glob(pattern, path) is expected


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


# Binds, connects or sends as `unixify explain`'s query words say (in|out tcp|udp
# ADDRESS PORT | unix PATH | abstract NAME), under the shim; the shim's log says which
# rule it matched and where it went.
CALLER = """\
import socket, sys
direction, kind, where, last = sys.argv[1:5]
stype = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
if where in ("unix", "abstract"):
    family, address = socket.AF_UNIX, last if where == "unix" else "\\0" + last
else:
    family = socket.AF_INET6 if ":" in where else socket.AF_INET
    address = (where, int(last))
s = socket.socket(family, stype)
s.settimeout(5)
try:
    if direction == "in":
        s.bind(address)
    elif stype == socket.SOCK_DGRAM:
        s.sendto(b"x", address)
    else:
        s.connect(address)
        if family == socket.AF_UNIX:  # where the shim sent it
            print("peer", s.getpeername(), file=sys.stderr)
except OSError as e:
    print("errno", e.errno)
"""

SHIM_RULE = re.compile(r"matches (no rule|rule (\d+))")
SHIM_TARGET = re.compile(r"listening on (\S+)|connecting to (\S+) failed|"
                         r"nobody listens at (\S+);|bound at (\S+) instead|peer (\S+)")
EXPLAIN_TARGET = re.compile(r"(?:at|goes to) (?:Unix socket file |abstract )(\S+)")


Decision = tuple[int, Union[str, None], Union[int, None]]


def shim_decision(rules: list[str], words: list[str]) -> Decision:
    """The rule the shim matched (0: none), where it sent the call if it says, and the
    call's errno if it failed."""
    result = run_wrapped(rules, [sys.executable, "-c", CALLER, *words], verbose=2,
                         timeout=30)
    found = SHIM_RULE.findall(result.stderr)
    assert len(found) == 1, result
    target = SHIM_TARGET.search(result.stderr)
    failed = re.search(r"^errno (\d+)$", result.stdout, re.M)
    return (int(found[0][1] or 0),
            next(group for group in target.groups() if group) if target else None,
            int(failed.group(1)) if failed else None)


def explain_decision(rules: list[str], words: list[str]) -> Decision:
    """The same as explain says it; the errno only of a call it says fails."""
    text = explain([parse_rule(rule) for rule in rules], parse_query(words))
    matched = re.search(r"rule (\d+) .*: matches$", text, re.M)
    target = EXPLAIN_TARGET.search(text.splitlines()[-1])
    failed = re.search(r"fails with \w+ \((\d+)\)", text.splitlines()[-1])
    return (int(matched.group(1)) if matched else 0, target.group(1) if target else None,
            int(failed.group(1)) if failed else None)


def assert_agree(rules: list[str], words: list[str]) -> None:
    said, done = explain_decision(rules, words), shim_decision(rules, words)
    assert said[:2] == done[:2]
    if said[2] is not None:  # a call explain says goes ahead may fail for other reasons
        assert said[2] == done[2]


# Rules and queries where explain and the shim must agree: glob edge cases, port ranges,
# CIDR, placeholders, first-match order (also through the index built from 32 rules).
# "D" stands for a directory of the test's own.  Connections no rule converts go to
# loopback only.
AGREEMENT = [
    (["in,path=D/%a-%p-%t-%%.sock"], "in tcp ::ffff:127.0.0.1 8080"),
    (["in,path=D/%a.sock"], "in udp ::1.2.3.4 53"),
    (["in,path=D/%a.sock"], "in tcp 2001:db8:0:0:1:0:0:1 80"),
    (["in,path=D/%a.sock"], "in tcp 64:ff9b::10.0.0.1 80"),
    (["out,from-unix=D/x.sock,ipv4,path=D/y.sock"], "out tcp unix D/x.sock"),
    (["in,from-unix=D/**/a?.sock,path=D/r.sock"], "in tcp unix D/p/q/a1.sock"),
    (["in,from-unix=D/**/a?.sock,path=D/r.sock"], "in tcp unix D/p/q/a.sock"),
    (["in,from-unix=a[!0-9].sock,path=D/r.sock"], "in udp unix D/ax.sock"),
    (["in,from-unix=a[!0-9].sock,path=D/r.sock"], "in udp unix D/a7.sock"),
    (["out,from-abstract=app-*,path=D/r.sock"], "out tcp abstract app-1"),
    (["out,from-abstract=app-*,path=D/r.sock"], "out tcp unix D/app-1"),
    (["out,port=8000-8010,path=D/p%p.sock"], "out tcp 127.0.0.1 8010"),
    (["out,port=8000-8010,path=D/p%p.sock"], "out tcp 127.0.0.1 8011"),
    (["out,port=8000-8010,path=D/p%p.sock"], "out udp 127.0.0.1 7999"),
    (["in,addr=10.1.0.0/16,path=D/c.sock"], "in udp 10.1.255.255 53"),
    (["in,addr=10.1.0.0/16,path=D/c.sock"], "in udp 10.2.0.1 53"),
    (["in,addr=10.1.0.0/16,path=D/c.sock"], "in tcp ::ffff:10.1.2.3 53"),
    (["in,addr=fd00::/8,abstract=v6-%p"], "in tcp fdff::1 9"),
    (["in,ipv6,path=D/six.sock", "in,path=D/any.sock"], "in tcp 127.0.0.1 80"),
    (["out,tcp,path=D/t.sock", "out,path=D/u.sock"], "out udp 127.0.0.1 80"),
    (["out,port=80,path=D/a.sock", "out,path=D/b.sock"], "out tcp 127.0.0.1 80"),
    (["out,port=80,path=D/a.sock", "out,path=D/b.sock"], "out tcp 127.0.0.1 81"),
    ([f"out,port={p},path=D/n{p}.sock" for p in range(9000, 9020)]
     + ["out,addr=127.0.0.2,path=D/wild.sock"]
     + [f"out,port={p},path=D/m{p}.sock" for p in range(9000, 9020)],
     "out tcp 127.0.0.2 9030"),
    ([f"out,port={p},path=D/n{p}.sock" for p in range(9000, 9020)]
     + ["out,addr=127.0.0.2,path=D/wild.sock"]
     + [f"out,port={p},path=D/m{p}.sock" for p in range(9000, 9020)],
     "out tcp 127.0.0.2 9005"),
    ([f"out,port={p},path=D/n{p}.sock" for p in range(9000, 9020)]
     + ["out,addr=127.0.0.2,path=D/wild.sock"]
     + [f"out,port={p},path=D/m{p}.sock" for p in range(9000, 9020)],
     "out tcp 127.0.0.3 9005"),
]


@pytest.mark.parametrize(("rules", "words"), AGREEMENT)
def test_explain_and_shim_agree(sockdir: Path, rules: list[str], words: str) -> None:
    """For each query, the rule explain names and where it says the call goes are what
    the shim, running the call, logs."""
    rules = [rule.replace("D/", f"{sockdir}/") for rule in rules]
    query = words.replace("D/", f"{sockdir}/").split()
    said = explain_decision(rules, query)
    with socket.socket(socket.AF_UNIX) as listener:
        if query[0] == "out" and query[2] in ("unix", "abstract") and said[1]:
            listener.bind(said[1])  # the shim logs no target for these: let it connect
            listener.listen()
        assert_agree(rules, query)


@pytest.mark.parametrize("direction", ["in", "out"])
@pytest.mark.parametrize(("action", "port"), [("path", 80), ("path", 800),
                                              ("abstract", 80), ("abstract", 800)])
def test_explain_and_shim_agree_on_the_longest_targets(sockdir: Path, direction: str,
                                                       action: str, port: int) -> None:
    """A target that expands to the most a Unix address holds (107 bytes of path, 106 of
    abstract name) with port 80, and one byte more with port 800: the call fails with
    ENAMETOOLONG.  (explain said it would bind or connect.)"""
    prefix, limit = (f"{sockdir}/", 107) if action == "path" else ("ufy-", 106)
    rules = [f"{direction},{action}={prefix}{'a' * (limit - len(prefix) - 2)}%p"]
    assert_agree(rules, [direction, "tcp", "127.0.0.1", str(port)])


def test_explain_says_what_the_shim_does_where_they_differed(sockdir: Path) -> None:
    """explain had its own matcher, and said otherwise than the shim did: %a of an
    IPv4-mapped address (Python's spelling, ::ffff:7f00:1, not inet_ntop's), a from-unix
    rule limited to a family (the shim never matches it with a Unix socket), and a target
    that expands past what a Unix address holds (the call fails)."""
    rules = [f"in,path={sockdir}/%a.sock"]
    text = explain([parse_rule(r) for r in rules],
                   parse_query(["in", "tcp", "::ffff:127.0.0.1", "80"]))
    assert text.endswith(f"at Unix socket file {sockdir}/::ffff:127.0.0.1.sock\n"), text
    assert shim_decision(rules, ["in", "tcp", "::ffff:127.0.0.1", "80"]) == (
        1, f"{sockdir}/::ffff:127.0.0.1.sock", None)
    rules = [f"out,from-unix={sockdir}/x.sock,ipv4,reject=EPROTONOSUPPORT"]
    text = explain([parse_rule(r) for r in rules],
                   parse_query(["out", "tcp", "unix", f"{sockdir}/x.sock"]))
    assert text.splitlines()[-2:] == [
        f"  rule 1 '{rules[0]}': no, it is for ipv4 sockets only",
        "=> no rule matches: connect() goes ahead unchanged on the Unix socket"], text
    assert shim_decision(rules, ["out", "tcp", "unix", f"{sockdir}/x.sock"]) == (
        0, None, errno.ENOENT)
    rules = [f"in,path={sockdir}/{'a' * 90}-%a.sock"]
    text = explain([parse_rule(r) for r in rules], parse_query(["in", "tcp", "::1", "80"]))
    assert text.endswith(f"=> bind() fails with ENAMETOOLONG (36): {sockdir}/{'a' * 90}"
                         "-%a.sock expands to more than a Unix socket address holds\n"), text
    assert shim_decision(rules, ["in", "tcp", "::1", "80"]) == (1, None, errno.ENAMETOOLONG)


def test_matcher_reads_no_environment_and_leaves_sockets_alone() -> None:
    """explain loads the matcher into the launcher's own process: with rules, inherited
    sockets and passed ones in its environment (a launcher run inside a wrapped program),
    nothing is read or logged, and its own sockets stay IP sockets."""
    code = ("import socket\n"
            "from unixify.explain import explain, parse_query\n"
            "from unixify.rules import parse_rule\n"
            "print(explain([parse_rule('in,path=/tmp/x.sock')],\n"
            "              parse_query(['in', 'tcp', '127.0.0.1', '80'])).splitlines()[-1])\n"
            "s = socket.socket()\n"
            "s.bind(('127.0.0.1', 0))\n"
            "print(s.family.name, s.getsockname()[0])\n")
    env = preloaded_env(UNIXIFY_RULES="UFY1{garbage", UNIXIFY_VERBOSE="3",
                        UNIXIFY_INHERIT="c,0,12345,2,1;", LISTEN_FDS="1",
                        LISTEN_PID=str(os.getpid()))
    del env["LD_PRELOAD"]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=30)
    assert result.stdout.splitlines() == [
        "=> bind() binds a Unix stream socket at Unix socket file /tmp/x.sock",
        "AF_INET 127.0.0.1"], result
    assert result.stderr == "", result
    exported = subprocess.run([require_tool("nm"), "-D", "--defined-only", matcher_path()],
                              capture_output=True, text=True, check=True).stdout
    assert [line.split()[-1] for line in exported.splitlines()
            if line.split()[-2] in "TDB"] == ["unixify_match"], exported
