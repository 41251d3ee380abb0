"""`unixify dispatch` running: delivery (protocols A and B), refusals that are counted,
reload, shutdown, sd_notify, socket activation.  Loopback only; the namespace, TPROXY
and AnyIP tests are in test_dispatch_netns.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import Processes, free_port, require_tool, unixify_command, wait_for
from dispatchkit import (
    RECEIVER,
    ask,
    dispatcher,
    hammer,
    loop_pid,
    receiver,
    start,
    status,
    stop,
)

from unixify.shim import dispatcher_path


def conf_text(port: int, sockdir: Path, *routes: str, extra: str = "") -> str:
    return "\n".join([f"listen,addr=::,port={port}", f"control,path={sockdir}/ctl",
                      *extra.splitlines(), *routes]) + "\n"


def test_passes_the_socket_itself(procs: Processes, sockdir: Path) -> None:
    port, port2 = free_port(), free_port()
    receiver(procs, "a", f"{sockdir}/web-{port}.sock", "--tag", "web")
    receiver(procs, "a", f"{sockdir}/v4-127.0.0.1.sock", "--tag", "plain")
    dispatcher(procs, sockdir / "d.conf",
               f"listen,addr=::,port={port}\nlisten,addr=127.0.0.1,port={port2}\n"
               f"control,path={sockdir}/ctl\n"
               f"port={port},send={sockdir}/web-%p.sock\n"
               f"addr=127.0.0.0/8,port={port2},send={sockdir}/v4-%a.sock\n")
    # the receiver talks to the client's own socket: it sees the real addresses
    words = ask("::1", port).split()
    assert words[0] == "web" and words[1] == "::1" and words[3:] == ["::1", str(port)]
    with socket.create_connection(("127.0.0.1", port)) as client:
        mine = client.getsockname()
        words = client.makefile().readline().split()
    assert words == ["web", f"::ffff:{mine[0]}", str(mine[1]), "::ffff:127.0.0.1", str(port)]
    # %a writes an IPv4 address plainly
    assert ask("127.0.0.1", port2).split()[0] == "plain"
    counters = status(sockdir / "d.conf")
    assert counters["accepted"] == "3" and counters["delivered"] == "3"


def test_no_route_and_reject_reset_the_connection(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    out = dispatcher(procs, sockdir / "d.conf",
                     conf_text(port, sockdir, "from=::1,reject", f"port={port + 1},send=/x"))
    for _ in range(3):
        with pytest.raises(ConnectionError):
            ask("::1", port)
        with pytest.raises(ConnectionError):
            ask("127.0.0.1", port)
    counters = status(sockdir / "d.conf")
    assert counters["refused reject"] == "3" and counters["refused no-route"] == "3"
    assert out.count("no-route") == 1  # logged, at most once a second per reason


def test_symlink_to_another_receiver_is_refused(procs: Processes, sockdir: Path) -> None:
    """socketbox's documented attack: a container replaces its receiver with a symlink
    to another container's socket."""
    port = free_port()
    (sockdir / "a").mkdir()
    (sockdir / "b").mkdir()
    victim = receiver(procs, "a", f"{sockdir}/a/web.sock", "--tag", "a")
    out = dispatcher(procs, sockdir / "d.conf",
                     conf_text(port, sockdir, f"addr=::1,send={sockdir}/b/web.sock",
                               f"send={sockdir}/a/web.sock"))
    assert ask("127.0.0.1", port).startswith("a ")
    os.symlink(f"{sockdir}/a/web.sock", f"{sockdir}/b/web.sock")
    with pytest.raises(ConnectionError):
        ask("::1", port)
    # a symlinked directory on the way is refused too
    (sockdir / "b" / "web.sock").unlink()
    (sockdir / "b").rmdir()
    os.symlink(f"{sockdir}/a", f"{sockdir}/b")
    time.sleep(1.1)  # the next log line for the reason
    with pytest.raises(ConnectionError):
        ask("::1", port)
    victim.wait_for("conn ")  # its lines arrive a moment after its answers
    assert victim.count("conn ") == 1
    assert status(sockdir / "d.conf")["refused symlink"] == "2"
    out.wait_for("symlink", count=2)


def test_owner_refuses_a_socket_of_another_user(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    mine = receiver(procs, "a", f"{sockdir}/root.sock", "--tag", "root")
    theirs = receiver(procs, "a", f"{sockdir}/nobody.sock", "--tag", "nobody")
    os.chown(sockdir / "nobody.sock", 65534, -1)
    dispatcher(procs, sockdir / "d.conf",
               conf_text(port, sockdir, f"addr=::1,send={sockdir}/nobody.sock,owner=root",
                         f"send={sockdir}/root.sock,owner=0"))
    assert ask("127.0.0.1", port).startswith("root ")
    with pytest.raises(ConnectionError):
        ask("::1", port)
    mine.wait_for("conn ")  # its lines arrive a moment after its answers
    assert theirs.count("conn ") == 0 and mine.count("conn ") == 1
    assert status(sockdir / "d.conf")["refused wrong-owner"] == "1"


def test_stuck_receiver_refuses_while_others_serve(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    receiver(procs, "a", f"{sockdir}/stuck.sock", "--stuck")
    receiver(procs, "a", f"{sockdir}/ok.sock", "--tag", "ok")
    dispatcher(procs, sockdir / "d.conf",
               conf_text(port, sockdir, f"addr=::1,send={sockdir}/stuck.sock,queue=5",
                         f"send={sockdir}/ok.sock"))
    held = []
    refused = 0
    for _ in range(40):  # 10 in the kernel's datagram queue, 5 in ours, the rest refused
        client = socket.create_connection(("::1", port))
        held.append(client)
        assert ask("127.0.0.1", port).startswith("ok ")
    for client in held:
        client.settimeout(0.5)
        try:
            if client.recv(1) == b"":
                refused += 1
        except ConnectionResetError:
            refused += 1
        except TimeoutError:
            pass
        client.close()
    counters = status(sockdir / "d.conf")
    stuck = counters[f"receiver {sockdir}/stuck.sock"].split()
    # in the kernel's datagram queue (net.unix.max_dgram_qlen, 10, plus one), 5 in ours
    in_kernel = int(stuck[stuck.index("delivered") + 1])
    assert 10 <= in_kernel <= 12, stuck
    assert stuck[-2:] == ["waiting", "5"]
    assert counters["refused queue-full"] == str(40 - 5 - in_kernel), counters
    assert refused == 40 - 5 - in_kernel
    assert counters["delivered"] == str(40 + in_kernel)


def test_slow_receiver_loses_nothing(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    receiver(procs, "a", f"{sockdir}/slow.sock", "--slow", "0.002")
    out = dispatcher(procs, sockdir / "d.conf",
                     conf_text(port, sockdir, f"send={sockdir}/slow.sock"),
                     env=dict(os.environ, UNIXIFY_FD_BUDGET="16"))
    errors, done, most = hammer(port, 32, 800, loop_pid(out.proc.pid), timeout=30)
    assert errors == [] and done == 800
    # 32 clients, 11 in the kernel's datagram queue: more than the budget of 16 would
    # wait; plus the listener, receiver, channel, epoll, signalfd, timerfd and stdio
    assert most <= 16 + 12, most
    counters = status(sockdir / "d.conf")
    assert counters["delivered"] == "800" and counters["refused queue-full"] == "0"
    out.wait_for("not accepting until")


def test_reload_swaps_routes_and_keeps_listeners(procs: Processes, sockdir: Path) -> None:
    port, port2 = free_port(), free_port()
    receiver(procs, "a", f"{sockdir}/one.sock", "--tag", "one")
    receiver(procs, "a", f"{sockdir}/two.sock", "--tag", "two")
    conf = sockdir / "d.conf"
    out = dispatcher(procs, conf, conf_text(port, sockdir, f"send={sockdir}/one.sock"))
    loop = loop_pid(out.proc.pid)
    listening = sorted(os.readlink(f"/proc/{loop}/fd/{fd}") for fd in os.listdir(
        f"/proc/{loop}/fd"))
    conf.write_text(conf_text(port, sockdir, f"send={sockdir}/two.sock",
                              extra=f"listen,addr=127.0.0.1,port={port2}"))
    out.proc.send_signal(signal.SIGHUP)
    out.wait_for("reloaded: 2 listeners, 1 routes")
    assert ask("::1", port).startswith("two ") and ask("127.0.0.1", port2).startswith("two ")
    # the listener of both configurations is the same socket
    now = sorted(os.readlink(f"/proc/{loop}/fd/{fd}") for fd in os.listdir(
        f"/proc/{loop}/fd"))
    assert set(listening) - set(now) <= {f for f in listening if "socket" not in f}
    # a bad reload keeps the running configuration and says why
    conf.write_text(conf_text(port, sockdir, "send=/x%q"))
    out.proc.send_signal(signal.SIGHUP)
    out.wait_for("reload failed; the running configuration stays")
    assert any("unknown placeholder '%q'" in line for line in out.lines)
    assert ask("::1", port).startswith("two ")
    # a listener that cannot be opened also fails the reload
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        conf.write_text(conf_text(port, sockdir, f"send={sockdir}/one.sock",
                                  extra=f"listen,addr=127.0.0.1,port="
                                        f"{taken.getsockname()[1]}"))
        out.proc.send_signal(signal.SIGHUP)
        out.wait_for("reload failed", count=2)
        assert ask("::1", port).startswith("two ")
        assert ask("127.0.0.1", port2).startswith("two ")
    # a removed listener is closed
    conf.write_text(conf_text(port, sockdir, f"send={sockdir}/one.sock"))
    out.proc.send_signal(signal.SIGHUP)
    out.wait_for("reloaded: 1 listeners", count=1)
    with pytest.raises(ConnectionRefusedError):
        ask("127.0.0.1", port2)
    assert ask("::1", port).startswith("one ")


def test_reload_under_looping_clients(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    receiver(procs, "a", f"{sockdir}/one.sock", "--tag", "one")
    receiver(procs, "a", f"{sockdir}/two.sock", "--tag", "two")
    conf = sockdir / "d.conf"
    out = dispatcher(procs, conf, conf_text(port, sockdir, f"send={sockdir}/one.sock"))
    stopping = threading.Event()
    errors: list[str] = []
    answers = {"one": 0, "two": 0}

    def client() -> None:
        while not stopping.is_set():
            try:
                answers[ask("127.0.0.1", port).split()[0]] += 1
            except (OSError, KeyError) as err:
                errors.append(repr(err))

    threads = [threading.Thread(target=client) for _ in range(64)]
    for thread in threads:
        thread.start()
    for n in range(30):  # SIGHUP every 100 ms
        conf.write_text(conf_text(port, sockdir, f"send={sockdir}/{('one', 'two')[n % 2]}.sock"))
        out.proc.send_signal(signal.SIGHUP)
        time.sleep(0.1)
    stopping.set()
    for thread in threads:
        thread.join()
    assert errors == [], errors[:5]
    assert answers["one"] and answers["two"]
    out.wait_for("reloaded", count=5)


def test_sigterm_delivers_what_waits_and_exits_0(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    slow = receiver(procs, "a", f"{sockdir}/slow.sock", "--slow", "0.05")
    out = dispatcher(procs, sockdir / "d.conf",
                     conf_text(port, sockdir, f"send={sockdir}/slow.sock"))
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]
    wait_for(lambda: status(sockdir / "d.conf")["accepted"] == "30", what="30 accepted")
    assert int(status(sockdir / "d.conf")["waiting"]) > 0
    assert stop(out) == 0
    for client in clients:
        client.settimeout(10)
        assert client.makefile().readline().startswith("hello ")
        client.close()
    slow.wait_for("conn ", count=30)
    assert slow.count("conn ") == 30
    assert any("stopped" in line for line in out.lines)
    with pytest.raises(ConnectionRefusedError):
        ask("127.0.0.1", port)
    assert not (sockdir / "ctl").exists()


def test_protocol_b_registrations(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    conf = sockdir / "d.conf"
    out = dispatcher(procs, conf, conf_text(
        port, sockdir, f"port={port},slot=7",
        extra="allow,slot=7,uid=0,max=2\nallow,slot=7,uid=65534\nallow,slot=8,uid=65534"))
    first = receiver(procs, "b", f"{sockdir}/ctl", "7", "--tag", "b1")
    receiver(procs, "b", f"{sockdir}/ctl", "7", "--tag", "b2")
    # past max= for this uid
    python3 = "/usr/bin/python3"  # not a virtual environment's: nobody runs it too
    third = start(procs, [python3, RECEIVER, "b", f"{sockdir}/ctl", "7"])
    third.wait_for("refused")
    # another uid: the slot is taken; a slot it may not register
    os.chmod(sockdir, 0o755)
    helper = sockdir / "receiver.py"
    shutil.copy(RECEIVER, helper)
    for slot, why in (("7", "taken by uid 0"), ("9", "no allow line")):
        result = subprocess.run([python3, str(helper), "b", f"{sockdir}/ctl", slot],
                                capture_output=True, text=True, timeout=30, user=65534,
                                group=65534)
        assert result.stdout.strip() == "refused", result
        out.wait_for(why)
    answers = {ask("::1", port).split()[0] for _ in range(10)}
    assert answers == {"b1", "b2"}  # both registrations take connections
    first.proc.kill()
    first.proc.wait()
    time.sleep(0.2)
    assert {ask("::1", port).split()[0] for _ in range(5)} == {"b2"}
    counters = status(conf)
    assert counters["slot 7"].split()[2:4] == ["registered", "1"]


def test_protocol_b_receiver_survives_a_restart(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    conf = sockdir / "d.conf"
    text = conf_text(port, sockdir, f"port={port},slot=7", extra="allow,slot=7,uid=0")
    out = dispatcher(procs, conf, text)
    b = receiver(procs, "b", f"{sockdir}/ctl", "7", "--tag", "b", "--reconnect")
    assert ask("::1", port).startswith("b ")
    assert stop(out) == 0
    b.wait_for("lost")
    dispatcher(procs, conf, text)
    b.wait_for("ready", count=2)
    assert ask("::1", port).startswith("b ")


def test_sd_notify_states(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sockdir / "notify"))
    notify.settimeout(20)
    conf = sockdir / "d.conf"
    out = dispatcher(procs, conf, conf_text(port, sockdir, "reject"),
                     env=dict(os.environ, NOTIFY_SOCKET=str(sockdir / "notify")))
    assert notify.recv(512).startswith(b"READY=1")
    out.proc.send_signal(signal.SIGHUP)
    assert notify.recv(512).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    assert notify.recv(512) == b"READY=1"
    assert stop(out) == 0
    assert notify.recv(512) == b"STOPPING=1"
    notify.close()


def test_socket_activation(procs: Processes, sockdir: Path) -> None:
    activate = require_tool("systemd-socket-activate")
    port = free_port()
    receiver(procs, "a", f"{sockdir}/r.sock", "--tag", "passed")
    conf = sockdir / "d.conf"
    conf.write_text(f"listen,systemd=web\ncontrol,path={sockdir}/ctl\n"
                    f"send={sockdir}/r.sock\n")
    out = start(procs, [activate, "-l", f"127.0.0.1:{port}", "--fdname=web",
                        *unixify_command(), "dispatch", str(conf)])
    out.wait_for(f"Listening on 127.0.0.1:{port}")
    # it starts the dispatcher at the first connection, which waits in the backlog
    assert ask("127.0.0.1", port, timeout=30).startswith("passed ")
    assert status(conf)["listeners"] == "1"
    assert stop(out) == 0


@pytest.mark.parametrize(("extra", "message"), [
    ("listen,addr=127.0.0.1,port={taken}", "cannot listen on 127.0.0.1:{taken}: Address "
                                           "already in use"),
    ("listen,systemd", "no socket was passed by systemd"),
    ("listen,addr=::,port={port},netns=/nonexistent/ns", "network namespace "
                                                         "/nonexistent/ns"),
])
def test_start_errors_are_one_line(sockdir: Path, extra: str, message: str) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        number = taken.getsockname()[1]
        (sockdir / "d.conf").write_text(f"listen,addr=::1,port={port}\n"
                                        + extra.format(taken=number, port=port + 1)
                                        + "\nreject\n")
        result = subprocess.run([*unixify_command(), "dispatch", str(sockdir / "d.conf")],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert message.format(taken=number) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_bad_config_does_not_start(sockdir: Path) -> None:
    (sockdir / "d.conf").write_text("listen,addr=::,port=1\nsend=\n")
    result = subprocess.run([*unixify_command(), "dispatch", str(sockdir / "d.conf")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert ":2, column 1: 'send' needs a value" in result.stderr
    assert result.stderr.count("\n") == 1


def test_socketbox_configuration_converted_and_used(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    receiver(procs, "a", f"{sockdir}/sb.sock", "--tag", "sb")
    (sockdir / "socketbox.conf").write_text(
        "max-maps:1\nmax-rules:1\nrule-set:0 size:2\n"
        f"ip:::ffff:127.0.0.0/104 port:{port} jump-map:0\n"
        "map-set:0 size:1 match-lport\n"
        f"port:{port} jump-unix:{sockdir}/sb.sock\n")
    result = subprocess.run([*unixify_command(), "dispatch", "--from-socketbox",
                             str(sockdir / "socketbox.conf")], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    dispatcher(procs, sockdir / "d.conf", f"listen,addr=::,port={port}\n"
               f"control,path={sockdir}/ctl\n" + result.stdout)
    assert ask("127.0.0.1", port).startswith("sb ")
    with pytest.raises(ConnectionError):
        ask("::1", port)


@pytest.mark.soak
def test_load_with_a_slow_receiver(procs: Processes, sockdir: Path) -> None:
    """Many short connections from 256 concurrent clients through a receiver slower than
    they are: none lost, and the loop's fds bounded by its budget.  The long form:
    UNIXIFY_DISPATCH_CONNECTIONS=100000."""
    total = int(os.environ.get("UNIXIFY_DISPATCH_CONNECTIONS", "5000"))
    port = free_port()
    receiver(procs, "a", f"{sockdir}/slow.sock", "--slow", "0.0002")
    out = dispatcher(procs, sockdir / "d.conf",
                     conf_text(port, sockdir, f"send={sockdir}/slow.sock"),
                     env=dict(os.environ, UNIXIFY_FD_BUDGET="64"))
    errors, done, most = hammer(port, 256, total, loop_pid(out.proc.pid))
    assert errors == [] and done == total, errors[:5]
    assert most <= 64 + 12, most
    counters = status(sockdir / "d.conf")
    assert counters["delivered"] == str(total)
    assert all(counters[f"refused {why}"] == "0" for why in ("queue-full", "receiver-gone"))


def test_thousands_of_exact_routes_keep_first_match(procs: Processes, sockdir: Path) -> None:
    """Exact-address routes are indexed; a wider route between them still wins for the
    addresses it covers, as the first match.  127.0.0.0/8 is all local: the client
    picks the local address by dialling it."""
    from unixify.dispatchconf import find_route, parse_config

    port = free_port()
    for name in ("r0", "r1", "r2", "wide", "last"):
        receiver(procs, "a", f"{sockdir}/{name}.sock", "--tag", name)
    routes = [f"addr=127.1.{n // 200}.{n % 200},port={port},send={sockdir}/r{n % 3}.sock"
              for n in range(1000)]
    routes.insert(500, f"addr=127.1.2.0/24,send={sockdir}/wide.sock")
    routes += [f"addr=127.1.{n // 200}.{n % 200},port={port},send={sockdir}/r{(n + 1) % 3}"
               ".sock" for n in range(1000, 2000)]
    routes.append(f"addr=127.0.0.0/8,send={sockdir}/last.sock")
    text = f"listen,addr=0.0.0.0,port={port}\ncontrol,path={sockdir}/ctl\n" + \
        "\n".join(routes) + "\n"
    dispatcher(procs, sockdir / "d.conf", text)
    config = parse_config(text, "d.conf")
    import ipaddress

    for host in ("127.1.0.0", "127.1.1.7", "127.1.2.99", "127.1.2.150", "127.1.3.1",
                 "127.1.9.199", "127.1.7.50", "127.1.10.0", "127.9.9.9"):
        found = find_route(config.routes, ipaddress.ip_address(host), port,
                           ipaddress.ip_address("127.0.0.1"), 40000)
        assert found is not None and found.target is not None
        expected = Path(found.target).stem
        assert ask(host, port).split()[0] == expected, host


def test_reload_ends_registrations_no_longer_allowed(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    conf = sockdir / "d.conf"
    out = dispatcher(procs, conf, conf_text(port, sockdir, f"port={port},slot=7",
                                            extra="allow,slot=7,uid=0"))
    b = receiver(procs, "b", f"{sockdir}/ctl", "7", "--tag", "b")
    assert ask("::1", port).startswith("b ")
    conf.write_text(conf_text(port, sockdir, f"port={port},slot=7",
                              extra="allow,slot=7,uid=65534"))
    out.proc.send_signal(signal.SIGHUP)
    b.wait_for("lost")
    out.wait_for("slot 7 is no longer allowed to uid 0")
    with pytest.raises(ConnectionError):
        ask("::1", port)
    assert status(conf)["refused no-registration"] == "1"


def test_status_without_a_running_dispatcher(sockdir: Path) -> None:
    conf = sockdir / "d.conf"
    conf.write_text(f"listen,addr=::,port=1\ncontrol,path={sockdir}/ctl\nreject\n")
    result = subprocess.run([*unixify_command(), "dispatch", "--status", str(conf)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr == (f"unixify dispatch: cannot ask the dispatcher at {sockdir}/ctl: "
                             "No such file or directory\n")
    conf.write_text("listen,addr=::,port=1\nreject\n")
    result = subprocess.run([*unixify_command(), "dispatch", "--status", str(conf)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "has no control line" in result.stderr


def test_drop_privileges_after_the_listeners_exist(procs: Processes, sockdir: Path) -> None:
    low = next(p for p in range(600, 1000) if _free_low_port(p))
    os.chmod(sockdir, 0o755)
    receiver(procs, "a", f"{sockdir}/r.sock", "--tag", "low")
    os.chmod(sockdir / "r.sock", 0o666)
    conf = sockdir / "d.conf"
    # the loop's program where only root can reach it, as under CI's install in /root
    hidden = Path(tempfile.mkdtemp())
    os.chmod(hidden, 0o700)
    program = hidden / "unixify-dispatcher"
    shutil.copy2(os.environ.get("UNIXIFY_DISPATCHER") or dispatcher_path(), program)
    out = dispatcher(procs, conf, f"listen,addr=127.0.0.1,port={low}\n"
                     f"control,path={sockdir}/ctl\ndrop,user=nobody\n"
                     f"send={sockdir}/r.sock\n",
                     env={**os.environ, "UNIXIFY_DISPATCHER": str(program)})
    loop = loop_pid(out.proc.pid)
    for pid in (out.proc.pid, loop):
        uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:4]
        assert uids == ["65534"] * 4, uids
    assert ask("127.0.0.1", low).startswith("low ")
    # a loop that dies is started again, by the front that can no longer reach its path
    os.kill(loop, signal.SIGKILL)

    def serving_again() -> bool:
        try:
            return loop_pid(out.proc.pid) != loop and ask("127.0.0.1", low).startswith("low ")
        except (AssertionError, OSError):
            return False  # no loop at this moment, or not yet serving
    wait_for(serving_again, what="a new loop serving")
    shutil.rmtree(hidden)
    # a reload that needs root now fails, and says so; the running one stays
    conf.write_text(f"listen,addr=127.0.0.1,port={low}\nlisten,addr=127.0.0.1,port={low + 1}"
                    f"\ncontrol,path={sockdir}/ctl\ndrop,user=nobody\nsend={sockdir}/r.sock\n")
    out.proc.send_signal(signal.SIGHUP)
    out.wait_for("Permission denied")
    out.wait_for("reload failed")
    assert ask("127.0.0.1", low).startswith("low ")


def _free_low_port(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            probe2 = socket.socket()
            try:
                probe2.bind(("127.0.0.1", port + 1))
            finally:
                probe2.close()
        except OSError:
            return False
    return True


def test_reload_sets_the_control_socket_permissions(procs: Processes, sockdir: Path) -> None:
    port = free_port()
    conf = sockdir / "d.conf"
    out = dispatcher(procs, conf, conf_text(port, sockdir, "reject").replace(
        "/ctl\n", "/ctl,mode=0600\n"))
    assert (sockdir / "ctl").stat().st_mode & 0o777 == 0o600
    conf.write_text(conf_text(port, sockdir, "reject").replace("/ctl\n",
                                                               "/ctl,mode=0660,group=65534\n"))
    out.proc.send_signal(signal.SIGHUP)
    out.wait_for("reloaded")
    info = (sockdir / "ctl").stat()
    assert info.st_mode & 0o777 == 0o660 and info.st_gid == 65534
    assert status(conf)["listeners"] == "1"


def test_freebind_and_a_journal_stderr(procs: Processes, sockdir: Path) -> None:
    """freebind listens on an address this host does not have (yet); with stderr a
    socket, as under journald, lines carry a syslog priority."""
    port = free_port()
    journal, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conf = sockdir / "d.conf"
    conf.write_text(f"listen,addr=203.0.113.77,port={port},freebind\nreject\n")
    proc = procs.start([*unixify_command(), "dispatch", str(conf)], stderr=theirs)
    theirs.close()
    journal.settimeout(20)
    text = b""
    while b"ready:" not in text:
        chunk = journal.recv(4096)
        assert chunk, text
        text += chunk
    assert text.startswith(b"<6>unixify[") and b"ready: 1 listeners" in text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    conf.write_text(f"listen,addr=203.0.113.77,port={port}\nreject\n")
    result = subprocess.run([*unixify_command(), "dispatch", str(conf)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1 and "Cannot assign requested address" in result.stderr
