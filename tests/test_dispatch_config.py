"""The dispatcher's configuration: `unixify dispatch --check` and `--from-socketbox`."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest
from conftest import unixify_command

from unixify.dispatchconf import find_route, parse_config


def dispatch(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*unixify_command(), "dispatch", *args], capture_output=True,
                          text=True, timeout=30, cwd=cwd)


GOOD = """\
# edge dispatcher
listen,addr=::ffff:127.100.100.1,port=1,transparent
listen,addr=0.0.0.0,port=80,reuseport,backlog=100
control,path=/run/unixify/dispatch.ctl,mode=0660
allow,slot=7,uid=0,max=3
addr=198.51.100.0/24,port=80,send=/run/ct/%a/web.sock,queue=10
addr=2001:db8::/64,port=22,from=10.0.0.0/8,from-port=1000-2000,slot=7
  port=23, reject
addr=::ffff:192.0.2.0/120,send=/run/a\\,b.sock,owner=0
"""


def test_check_prints_the_table(tmp_path: Path) -> None:
    conf = tmp_path / "d.conf"
    conf.write_text(GOOD)
    result = dispatch("--check", str(conf))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == "listen  [::ffff:127.100.100.1]:1 (transparent)"
    assert lines[1] == "listen  0.0.0.0:80 (reuseport, backlog 100)"
    assert lines[2] == "control /run/unixify/dispatch.ctl (mode 0660)"
    assert lines[3] == "allow   slot 7 to uid 0, at most 3 registrations"
    rows = [line.split() for line in lines[4:]]
    assert rows[0] == ["#", "line", "match", "action"]
    assert rows[1] == ["1", "6", "addr=198.51.100.0/24", "port=80", "send",
                       "/run/ct/%a/web.sock", "queue", "10"]
    assert rows[2][:4] == ["2", "7", "addr=2001:db8::/64", "port=22"]
    assert rows[2][-2:] == ["slot", "7"]
    assert rows[3] == ["3", "8", "port=23", "reject"]
    # an IPv4-mapped network is the IPv4 network; the escaped comma is in the path
    assert rows[4] == ["4", "9", "addr=192.0.2.0/24", "send", "/run/a,b.sock", "(owner",
                       "0)"]
    assert rows[5] == ["-", "-", "any", "other", "close"]


def test_routes_match_first_and_as_addresses(tmp_path: Path) -> None:
    config = parse_config(GOOD, "d.conf", str(tmp_path))
    ip = ipaddress.ip_address

    def route_line(local: str, port: int, remote: str, remote_port: int) -> int:
        found = find_route(config.routes, ip(local), port, ip(remote), remote_port)
        return found.line if found else 0

    assert route_line("::ffff:198.51.100.7", 80, "::ffff:10.0.0.1", 5000) == 6
    assert route_line("198.51.100.7", 81, "10.0.0.1", 5000) == 0
    assert route_line("2001:db8::1:10", 22, "::ffff:10.9.9.9", 1500) == 7
    assert route_line("2001:db8::1:10", 22, "::ffff:10.9.9.9", 2001) == 0
    assert route_line("2001:db8::1:10", 23, "2001:db8::5", 1) == 8
    assert route_line("192.0.2.200", 443, "2001:db8::5", 1) == 9


BAD = [
    ("listen,addr=1.2.3.4", "'listen' needs port="),
    ("listen,addr=1.2.3.0/24,port=1", "column 8: '1.2.3.0/24' is not an IPv4 or IPv6 address"),
    ("listen,addr=::,port=0", "column 16: port 0"),
    ("listen,addr=::,port=1,backlog=0", "column 23: backlog '0' is not a number"),
    ("listen,addr=::,port=1,netns=edge", "column 23: netns 'edge' is not an absolute path"),
    ("listen,addr=::,port=1,transparent=1", "column 23: 'transparent' takes no value"),
    ("listen,addr=::,port=1,colour=red", "column 23: unknown option 'colour' for 'listen'"),
    ("listen,systemd=", "column 8: 'systemd=' needs a file descriptor name"),
    ("listen=3", "column 1: 'listen' takes no value"),
    ("addr=1.2.3.4,port=99999,send=/x", "column 14: port 99999 is out of range"),
    ("addr=1.2.3.4/8,send=/x", "column 1: address '1.2.3.4/8' has bits set beyond its prefix"),
    ("from=nowhere,send=/x", "column 1: 'nowhere' is not an IPv4 or IPv6 address"),
    ("from-port=9-1,send=/x", "column 1: port range '9-1' is reversed"),
    ("port=1,send=/x,reject", "column 16: conflicting actions 'send' and 'reject'"),
    ("port=1", "no action (send=PATH, slot=N or reject)"),
    ("port=1,port=2,reject", "column 8: 'port' given twice"),
    ("port=1,,reject", "column 8: empty option"),
    ("send=/x%q", "column 1: unknown placeholder '%q' in send path"),
    ("send=/" + "x" * 120, "column 1: send path is 121 bytes"),
    ("send=/x,queue=0", "column 9: queue '0' is not a number from 1"),
    ("send=/x,owner=nosuchuser", "column 9: unknown user 'nosuchuser'"),
    ("reject,queue=5", "column 8: 'queue' applies to send= and slot= routes"),
    ("slot=1,owner=0", "column 8: 'owner' checks a send= receiver's socket file"),
    ("slot=x", "column 1: slot 'x' is not a number"),
    ("drop,user=nosuchuser", "column 6: unknown user 'nosuchuser'"),
    ("drop,group=0", "'drop' needs user="),
    ("control,mode=0600", "'control' needs path="),
    ("control,path=/c,mode=999", "column 17: mode '999' is not an octal file mode"),
    ("allow,slot=1", "'allow' needs uid="),
    ("allow,slot=1,uid=0,max=0", "column 20: max '0' is not a number from 1 to 1024"),
    ("lisen,addr=::,port=1", "column 1: unknown option 'lisen' for a route"),
]


@pytest.mark.parametrize(("line", "message"), BAD)
def test_bad_line_gets_one_line(tmp_path: Path, line: str, message: str) -> None:
    conf = tmp_path / "d.conf"
    conf.write_text(f"listen,addr=::,port=5\n# comment\n{line}\n")
    result = dispatch("--check", str(conf))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"unixify dispatch: {conf}:3"), result.stderr
    assert message in result.stderr, result.stderr
    assert result.stderr.rstrip().endswith(f"in {line!r}")


def test_every_error_is_reported(tmp_path: Path) -> None:
    conf = tmp_path / "d.conf"
    conf.write_text("listen,addr=::,port=5\nport=1\ncontrol,path=/a\ncontrol,path=/b\n"
                    "send=/x%z\nlisten,addr=::,port=5\n")
    result = dispatch("--check", str(conf))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert [line.split(",")[0].split(": ")[1] for line in lines] == \
        [f"{conf}:2", f"{conf}:4", f"{conf}:5"], lines


WHOLE = [
    ("port=80,send=/x\n", "no listener"),
    ("listen,addr=::,port=5\nlisten,addr=0::0,port=5\n", ":2: the same listener as line 1"),
    ("listen,addr=::,port=5\nslot=3\n", ":2: slot= needs a control socket"),
    ("listen,addr=::,port=5\ncontrol,path=/c\nslot=3\n",
     ":3: no allow line lets anyone register slot 3"),
    ("listen,addr=::,port=5\nallow,slot=1,uid=0\n", ":2: allow needs a control socket"),
    ("listen,addr=::,port=5\ncontrol,path=/c\nallow,slot=1,uid=0\nallow,slot=1,uid=root\n",
     ":4: slot 1 is allowed to uid 0 on line 3 already"),
    ("listen,addr=::,port=5\ndrop,user=root\ndrop,user=root\n", ":3: a second 'drop' line"),
]


@pytest.mark.parametrize(("content", "message"), WHOLE)
def test_whole_file_errors(tmp_path: Path, content: str, message: str) -> None:
    conf = tmp_path / "d.conf"
    conf.write_text(content)
    result = dispatch("--check", str(conf))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_unreadable_file_and_usage(tmp_path: Path) -> None:
    result = dispatch("--check", str(tmp_path / "missing.conf"))
    assert result.returncode == 1
    assert "cannot read configuration" in result.stderr and "No such file" in result.stderr
    (tmp_path / "latin1.conf").write_bytes(b"send=/\xe9\n")
    result = dispatch("--check", str(tmp_path / "latin1.conf"))
    assert result.returncode == 1 and "not UTF-8 text" in result.stderr
    result = dispatch("--check")
    assert result.returncode == 1 and "expected one FILE" in result.stderr
    assert dispatch("--help").stdout.startswith("usage: unixify dispatch")


def test_relative_paths_are_taken_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "d.conf").write_text("listen,addr=::,port=5\nsend=run/x.sock\n")
    result = dispatch("--check", "d.conf", cwd=str(tmp_path))
    assert f"send {tmp_path}/run/x.sock" in result.stdout, result.stdout + result.stderr


# socketbox's own example (shared/reference.md), with its lookups
SOCKETBOX = """\
max-maps:4
max-rules:4
rule-set:0 size:10
ip:::ffff:127.0.0.1 port:18680 jump-unix:/run/socketbox/http-08080.sock
ip:2001:db8::/32 jump-map:1
rip:::ffff:10.0.0.0/104 jump-rule:2
port:22 jump-fd:200
default fail
rule-set:2 size:5
ip:::1 fail
default jump-unix:/run/fallback.sock
map-set:1 size:10 match-lip:128 match-lport
ip:2001:db8::1 port:80 jump-unix:/run/a.sock
ip:2001:db8::2 port:80 jump-unix:/run/b.sock
ip:2001:db8::1 port:443 jump-rule:2
default jump-unix:/run/map-default.sock
"""


def convert(tmp_path: Path, content: str) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "socketbox.conf"
    source.write_text(content)
    return dispatch("--from-socketbox", str(source))


def lookup(tmp_path: Path, text: str, local: str, port: int, remote: str,
           remote_port: int = 40000) -> str:
    config = parse_config("listen,addr=::,port=1\n" + text, "out.conf", str(tmp_path))
    ip = ipaddress.ip_address
    route = find_route(config.routes, ip(local), port, ip(remote), remote_port)
    if route is None:
        return "close"
    return route.target or route.action


def test_socketbox_example_converts_with_the_same_lookups(tmp_path: Path) -> None:
    result = convert(tmp_path, SOCKETBOX)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    out = tmp_path / "out.conf"
    out.write_text("listen,addr=::ffff:127.100.100.1,port=1,transparent\n" + text)
    checked = dispatch("--check", str(out))
    assert checked.returncode == 0, checked.stderr
    assert lookup(tmp_path, text, "::ffff:127.0.0.1", 18680, "::1") == \
        "/run/socketbox/http-08080.sock"
    assert lookup(tmp_path, text, "2001:db8::2", 80, "::1") == "/run/b.sock"
    assert lookup(tmp_path, text, "2001:db8::1", 443, "::1") == "/run/fallback.sock"
    assert lookup(tmp_path, text, "2001:db8::9", 80, "::1") == "/run/map-default.sock"
    assert lookup(tmp_path, text, "::1", 22, "::ffff:10.1.2.3") == "reject"
    assert lookup(tmp_path, text, "::2", 80, "::ffff:10.1.2.3") == "/run/fallback.sock"
    assert lookup(tmp_path, text, "::1", 80, "::1") == "reject"
    # jump-fd has no equivalent: named in the output and on stderr, its traffic refused
    assert "# " in text and "jump-fd:200" in text
    assert lookup(tmp_path, text, "::1", 22, "::1") == "reject"
    assert result.stderr.count("\n") == 1 and ":7: jump-fd:200" in result.stderr


def test_socketbox_dialect(tmp_path: Path) -> None:
    # abbreviated keywords, default:fail, a map on the local port only, a mask written
    # as an IPv6 mask, a v6 prefix that takes in IPv4-mapped addresses too
    result = convert(tmp_path, "max-maps:2\nmax-rules:1\nrule-set:0 s:4\n"
                     "ip:fd01::/ffff:: jump-map:1\nip:::/8 p:9 jump-unix:/run/%s,x\n"
                     "map-set:1 size:4 match-lport:1\nport:80 jump-unix:/n.sock\n"
                     "default:fail\n")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert lookup(tmp_path, text, "fd01::5", 80, "::1") == "/n.sock"
    assert lookup(tmp_path, text, "fd01::5", 81, "::1") == "reject"
    assert lookup(tmp_path, text, "::ffff:1.2.3.4", 9, "::1") == "/run/%%s,x"
    assert lookup(tmp_path, text, "::7", 9, "::1") == "/run/%%s,x"
    assert lookup(tmp_path, text, "2001::7", 9, "::1") == "reject"
    assert "send=/run/%%s\\,x" in text
    assert result.stderr == ""


@pytest.mark.parametrize(("content", "message"), [
    ("rule-set:0 size:1\nip:10.0.0.1 fail\n", ":2: '10.0.0.1' is not an IPv6 address"),
    ("rule-set:0 size:1\nj:/x\n", ":2: keyword 'j' is ambiguous"),
    ("rule-set:0 size:1\nport:22 fail # ssh\n", ":2: '#' starts a comment only"),
    ("ip:::1 fail\n", ":1: an entry before any rule-set"),
    ("rule-set:0 size:1\ndefault fail\nport:1 fail\n", ":3: a match after 'default'"),
    ("map-set:0 size:1\nip:::1/64 fail\n", ":2: a map entry takes an exact address"),
    ("rule-set:0 size:1\nport:70000 fail\n", ":2: port '70000' is not a number"),
    ("rule-set:0 size:1\nbogus:1\n", ":2: keyword 'bogus' is unknown"),
])
def test_socketbox_errors(tmp_path: Path, content: str, message: str) -> None:
    result = convert(tmp_path, content)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_socketbox_what_cannot_be_expressed_is_named(tmp_path: Path) -> None:
    result = convert(tmp_path, "max-rules:3\nrule-set:0 size:3\nip:::1 jump-rule:1\n"
                     "ip:fd00::/ff00::ff jump-unix:/m.sock\nport:5 jump-rule:2\n"
                     "rule-set:1 size:1\nport:1 jump-rule:0\ndefault:jump-unix:/d.sock\n")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    notes = result.stderr.splitlines()
    assert any(":7: a loop of jumps through rule-set:0" in note for note in notes), notes
    assert any(":4: an address mask that is not a prefix" in note for note in notes), notes
    assert any(":5: a jump to rule-set:2, which is not defined" in note for note in notes)
    assert any(":8: socketbox ignores the argument of 'default:jump-unix:/d.sock'" in note
               for note in notes), notes
    comments = [line for line in text.splitlines() if line.startswith("# ")]
    assert len(comments) >= 3 + 3
    # the loop's and the undefined jump's connections are refused, not passed on
    assert lookup(tmp_path, text, "::1", 1, "::1") == "reject"
    assert lookup(tmp_path, text, "::2", 5, "::1") == "reject"
    # socketbox ignores default:'s argument: the default stays fail
    assert lookup(tmp_path, text, "::1", 2, "::1") == "reject"
