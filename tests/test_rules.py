"""The rule language: every keyword, every error, and the encoding the shim reads."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unixify.encoding import encode_rule, encode_rules
from unixify.rules import Rule, RuleError, parse_rule, parse_rules_file


def parse(text: str) -> Rule:
    return parse_rule(text, cwd="/srv")


def test_matches_and_path_action() -> None:
    rule = parse("in,tcp,addr=127.0.0.1,port=8000-8010,path=/run/app-%p.sock")
    assert rule.direction == "in"
    assert rule.socket_type == "stream"
    assert rule.address == ipaddress.ip_network("127.0.0.1/32")
    assert rule.ports == (8000, 8010)
    assert rule.action == "path"
    assert rule.target == "/run/app-%p.sock"


@pytest.mark.parametrize("flag,kind", [("tcp", "stream"), ("stream", "stream"),
                                       ("udp", "dgram"), ("dgram", "dgram"),
                                       ("datagram", "dgram")])
def test_type_aliases(flag: str, kind: str) -> None:
    assert parse(f"{flag},ignore").socket_type == kind


def test_last_direction_and_type_win() -> None:
    rule = parse("in,out,udp,tcp,ignore")
    assert (rule.direction, rule.socket_type) == ("out", "stream")


def test_address_keyword_and_cidr() -> None:
    assert parse("address=10.0.0.0/8,ignore").address == ipaddress.ip_network("10.0.0.0/8")
    assert parse("addr=fd00::/64,ignore").address == ipaddress.ip_network("fd00::/64")
    assert parse("addr=[::1],ignore").address == ipaddress.ip_network("::1/128")


def test_addresses_compare_as_addresses() -> None:
    assert parse("addr=0:0:0:0:0:0:0:1,ignore").address == parse("addr=::1,ignore").address
    assert parse("addr=::ffff:1.2.3.4,ignore").address == ipaddress.ip_network("1.2.3.4/32")
    mapped = parse("addr=::ffff:10.0.0.0/104,ignore").address
    assert mapped == ipaddress.ip_network("10.0.0.0/8")


def test_relative_path_is_made_absolute_against_cwd() -> None:
    assert parse("path=run/x.sock").target == "/srv/run/x.sock"


def test_escapes() -> None:
    assert parse(r"path=/tmp/a\,b").target == "/tmp/a,b"
    assert parse(r"path=/tmp/a\\b").target == "/tmp/a\\b"
    assert parse(r"path=/tmp/a=b").target == "/tmp/a=b"  # after the first '=' all is value


@pytest.mark.parametrize("text,number", [
    ("reject", errno.EACCES), ("reject=ECONNREFUSED", errno.ECONNREFUSED),
    ("reject=econnrefused", errno.ECONNREFUSED), ("reject=EWOULDBLOCK", errno.EAGAIN),
    ("reject=ENOTSUP", errno.EOPNOTSUPP), ("reject=13", 13),
])
def test_reject_errno(text: str, number: int) -> None:
    assert parse(text).reject_errno == number


def test_other_actions() -> None:
    assert parse("in,blackhole").action == "blackhole"
    assert parse("ignore").action == "ignore"
    assert parse("abstract=app-%p").target == "app-%p"
    assert parse("systemd").systemd_name is None
    assert parse("systemd=web").systemd_name == "web"
    assert parse("path=/x,noremove").noremove
    assert parse("from-unix=/run/*.sock,path=/tmp/y").from_unix == "/run/*.sock"
    assert parse("from-abstract=foo*,abstract=bar").from_abstract == "foo*"


@pytest.mark.parametrize("text,message,column", [
    ("", "empty rule", 0),
    ("in,,path=/x", "empty option", 4),
    ("in,path=/x,", "empty option", 12),
    ("in,prt=80,path=/x", "unknown option 'prt'", 4),
    ("in,bogus,path=/x", "unknown option 'bogus'", 4),
    ("port=70000,path=/x", "out of range", 1),
    ("port=90-80,path=/x", "reversed", 1),
    ("port=eighty,path=/x", "not a number", 1),
    ("in,port=80-,path=/x", "port range '80-' needs both ends", 4),
    ("port=-80,path=/x", "needs both ends", 1),
    ("port=,path=/x", "needs a value", 1),
    ("reject=ENOTANERRNO", "unknown errno name", 1),
    ("reject=99999", "out of range", 1),
    ("reject=0", "out of range", 1),
    ("reject=", "needs an errno", 1),
    ("path=", "needs a value", 1),
    ("path=/a,reject", "conflicting actions", 9),
    ("out,blackhole", "only to 'in'", 5),
    ("blackhole", "only to 'in'", 1),
    ("in,reject,noremove", "needs a 'path=' action", 11),
    ("in,port=80", "no action", 0),
    ("addr=1.2.3.4.5,ignore", "not an IPv4 or IPv6 address", 1),
    ("addr=10.0.0.1/8,ignore", "bits set beyond its prefix", 1),
    ("in=1,ignore", "takes no value", 1),
    ("path=/x/%q", "unknown placeholder", 1),
    ("path=/" + "x" * 120, "at most 107", 1),
    ("addr=1.2.3.4,addr=1.2.3.5,ignore", "given twice", 14),
    ("from-unix=/a,port=3,path=/b", "cannot be combined", 14),
    ("=x,ignore", "without a name", 1),
    ("in,path=/a\0b", "NUL character", 11),
    ("in,systemd=\udcff", "byte 0xff is not valid UTF-8", 12),
    ("out,from-unix=\ud800,ignore", "U+D800 is not valid UTF-8", 15),
    ("out,from-unix=" + "*" * 1025 + ",ignore", "at most 1024", 5),
])
def test_errors_name_text_and_position(text: str, message: str, column: int) -> None:
    with pytest.raises(RuleError) as info:
        parse(text)
    err = info.value
    assert message in err.message
    assert err.column == column
    assert "\n" not in str(err)
    assert repr(text) in str(err)


def test_rules_file_comments_blank_lines_and_location() -> None:
    content = "# services\n\n   in,port=80,path=/run/web.sock\nout,ignore\n"
    rules = parse_rules_file(content, "rules.txt", cwd="/")
    assert [r.action for r in rules] == ["path", "ignore"]
    with pytest.raises(RuleError) as info:
        parse_rules_file("in,ignore\nin,port=x,ignore\n", "rules.txt", cwd="/")
    assert str(info.value).startswith("rules.txt:2, column 4:")


def test_encoding_is_length_delimited() -> None:
    rule = parse(r"in,tcp,addr=10.0.0.0/8,port=80,path=/tmp/a\,b{c}")
    assert encode_rule(rule) == ("{A1:Pd1:it1:sa10:0a000000/8p5:80-80"
                                 "T11:/tmp/a,b{c}}")
    assert encode_rules([rule, parse("reject=EPERM")]).startswith("UFY1{")


RULE_ALPHABET = st.sampled_from(
    ["in", "out", "tcp", "udp", "path=/x", "addr=", "port=", "reject", "=", ",", "\\",
     "blackhole", "ignore", "abstract=n", "systemd", "noremove", "1", "-", "::", "%",
     "ffff", "10.0.0.1", "/", "E", "from-unix=", " "])


@settings(max_examples=400, deadline=None)
@given(st.lists(RULE_ALPHABET, max_size=12).map("".join))
def test_parser_raises_only_its_own_error(text: str) -> None:
    try:
        rule = parse(text)
    except RuleError as err:
        assert "\n" not in str(err)
    else:
        encode_rule(rule)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_parser_on_arbitrary_text(text: str) -> None:
    with contextlib.suppress(RuleError):
        parse(text)


def test_family_permission_and_other_family_keywords() -> None:
    rule = parse("in,ipv6,port=80,path=run/web.sock,mode=0660,owner=0,group=root")
    assert (rule.family, rule.mode, rule.owner, rule.group) == ("ipv6", 0o660, 0, 0)
    assert (rule.owner_name, rule.group_name) == ("root", "root")  # for the shim's messages
    assert encode_rule(rule) == ("{A1:Pd1:ip5:80-80T17:/srv/run/web.sockf1:6m3:660o1:0g1:0"
                                 "O4:rootG4:root}")
    assert parse("out,vsock=any:5678").numbers == (0xFFFFFFFF, 5678)
    assert parse("tipc=2:2:128:99:0").numbers == (2, 2, 128, 99, 0)
    fc = parse("out,fc=fc.sock:1024")
    assert (fc.target, fc.numbers) == ("/srv/fc.sock", (1024,))
    assert encode_rule(fc) == "{A1:Fd1:oT12:/srv/fc.sockv4:1024}"


@pytest.mark.parametrize("text,fragment", [
    ("ipv4,addr=::1,reject", "is not an ipv4 address"),
    ("ipv4,ipv6,reject", "cannot be combined"),
    ("in,fc=/x:1", "applies to 'out' only"),
    ("out,vsock=3", "expected CID:PORT"),
    ("out,vsock=x:1", "CID 'x' is not a number"),
    ("out,tipc=1:2:3:4", "ADDRTYPE:SCOPE:TYPE:LOWER:UPPER"),
    ("out,tipc=256:0:1:1:1", "address type is 0-255"),
    ("out,fc=:5", "expected UNIX_PATH:PORT"),
    ("in,path=/x,mode=8", "not an octal file mode"),
    ("in,path=/x,mode=", "needs a value"),
    ("in,reject,mode=0600", "needs a 'path=' action"),
])
def test_new_keyword_errors(text: str, fragment: str) -> None:
    with pytest.raises(RuleError, match=re.escape(fragment)):
        parse(text)
