"""`unixify explain` and the from-unix glob, checked against the shim's own matching."""

from __future__ import annotations

import errno
import ipaddress
import os
import subprocess
import sys

import pytest
from conftest import run_wrapped, unixify_command

from unixify.explain import Query, explain, glob_matches, parse_query
from unixify.rules import parse_rule

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
