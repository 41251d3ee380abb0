#!/usr/bin/env python3
"""unixify benchmarks: ratios measured side by side in one run.

    python3 bench/bench.py [datapath|setup|datagram|launcher|rules|seccomp|all] [--rounds N]
                           [--quick] [--old-shim LIB]

datapath  redis-benchmark against one redis-server build reached four ways: its own
          Unix socket (native), converted by unixify, plain TCP, and socat in front.
setup     connect+close loops against C accept loops: a native Unix client and plain TCP
          vs IPv4 clients under unixify: converted by a rule without conditions, by
          one with conditions they meet, and left TCP by one whose conditions they do
          not meet.  --old-shim LIB runs the unixify variants with another build too.
datagram  sendto+recvfrom round trips with addresses on both sides: native Unix
          datagram sockets vs a UDP pair converted by unixify (plus plain UDP).
launcher  `unixify -r ... true` vs `python3 -c pass`.
rules     connect+close converted by the last of 100,000 rules vs by the only rule, and
          the start of a program that loads 100,000 rules vs one rule.
seccomp   the seccomp back end: a static C connect+close loop converted vs native
          AF_UNIX; Go net/http with a new connection per request and with keep-alive,
          converted (server and client supervised) vs native TCP.
dispatch  short connections (connect, one small answer, close) from 64 concurrent
          clients: new connections per second and p99 connect-to-first-byte, against
          the server accepting itself, through `unixify dispatch` (protocols A and B),
          HAProxy in TCP mode and socat fork in front of it.

Variants run interleaved, round after round, and the median of the rounds is compared,
so drift on a busy machine hits all of them alike.  The targets of the foundation issue
are checked; the exit status is 1 if one is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent


def unixify() -> list[str]:
    found = shutil.which("unixify")
    return [found] if found else [sys.executable, "-m", "unixify"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise SystemExit(f"bench: timed out waiting for {what}")


def tcp_ready(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def background(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def interleave(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, measure in variants.items():
            samples[name].append(measure())
    return {name: statistics.median(values) for name, values in samples.items()}


def report(title: str, unit: str, results: dict[str, float], base: str) -> None:
    print(f"\n{title} (median, {unit}; ratio to {base})")
    for name, value in results.items():
        print(f"  {name:<22} {value:>14.1f}   {value / results[base]:6.3f}x")


class Targets:
    def __init__(self) -> None:
        self.missed: list[str] = []

    def check(self, label: str, value: float, op: str, bound: float) -> None:
        ok = value >= bound if op == ">=" else value <= bound
        print(f"  target {label}: {value:.3f} {op} {bound}  {'ok' if ok else 'MISSED'}")
        if not ok:
            self.missed.append(label)


def bench_datapath(rounds: int, quick: bool, targets: Targets) -> None:
    server = shutil.which("redis-server")
    client = shutil.which("redis-benchmark")
    socat = shutil.which("socat")
    if not server or not client:
        print("datapath: redis-server/redis-benchmark not installed; skipped")
        return
    tmp = Path(tempfile.mkdtemp(prefix="ufy-bench-"))
    requests = "20000" if quick else "100000"
    common = ["--save", "", "--appendonly", "no", "--dir", str(tmp)]
    native_sock, conv_sock, socat_sock = tmp / "native.sock", tmp / "conv.sock", tmp / "s.sock"
    tcp_port, conv_port = free_port(), free_port()

    def run(target: list[str]) -> float:
        out = subprocess.run([client, *target, "-n", requests, "-c", "50", "-t", "get,set",
                              "--csv", "-q"], capture_output=True, text=True, check=True).stdout
        rates = [float(line.split(",")[1].strip('"')) for line in out.splitlines()[1:]]
        return statistics.mean(rates)

    with background([server, "--port", "0", "--unixsocket", str(native_sock), *common]), \
         background([*unixify(), "-r", f"in,port={conv_port},path={conv_sock}", server,
                     "--port", str(conv_port), "--bind", "127.0.0.1", *common]), \
         background([server, "--port", str(tcp_port), "--bind", "127.0.0.1", *common]):
        wait_until(native_sock.is_socket, "native redis")
        wait_until(conv_sock.is_socket, "converted redis")
        wait_until(lambda: tcp_ready(tcp_port), "tcp redis")
        variants: dict[str, Callable[[], float]] = {
            "native unix": lambda: run(["-s", str(native_sock)]),
            "unixify": lambda: run(["-s", str(conv_sock)]),
            "plain tcp": lambda: run(["-h", "127.0.0.1", "-p", str(tcp_port)]),
        }
        if socat:
            socat_proc = subprocess.Popen(
                [socat, f"UNIX-LISTEN:{socat_sock},fork,backlog=4096", f"TCP:127.0.0.1:{tcp_port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            wait_until(socat_sock.is_socket, "socat")
            variants["socat unix->tcp"] = lambda: run(["-s", str(socat_sock)])
        try:
            results = interleave(variants, rounds)
        finally:
            if socat:
                os.killpg(socat_proc.pid, signal.SIGKILL)
                socat_proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)
    report(f"data path: redis-benchmark get+set, {requests} requests, 50 clients",
           "requests/s", results, "native unix")
    targets.check("unixify / native unix", results["unixify"] / results["native unix"],
                  ">=", 0.98)
    if "socat unix->tcp" in results:
        targets.check("unixify / socat", results["unixify"] / results["socat unix->tcp"],
                      ">=", 2.0)


def run_number(args: list[str], env: dict[str, str] | None = None) -> float:
    """A helper program's one-number answer."""
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout
    return float(out.split()[0])


def build(tmp: Path, name: str, *extra: str) -> str:
    binary = tmp / name
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-o", str(binary),
                    str(HERE / f"{name}.c"), *extra], check=True)
    return str(binary)


def run_pair(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """connloop's answer: wall time and CPU time per connection."""
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout
    wall, cpu = out.split()
    return float(wall), float(cpu)


def interleave_cpu(variants: dict[str, Callable[[], tuple[float, float]]], rounds: int
                   ) -> dict[str, tuple[float, float, float]]:
    """Medians of wall and CPU time, and the spread of the wall times (interquartile
    range over the median), round after round as interleave() but in a new order each
    round, so that no variant always follows the same one."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    order = list(variants)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            samples[name].append(variants[name]())
    results = {}
    for name, values in samples.items():
        walls = [w for w, _ in values]
        quart = statistics.quantiles(walls, n=4) if len(walls) > 1 else [walls[0]] * 3
        median = statistics.median(walls)
        results[name] = (median, statistics.median(c for _, c in values),
                         (quart[2] - quart[0]) / median)
    return results


def bench_setup(rounds: int, quick: bool, targets: Targets, old_shim: str | None = None
                ) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ufy-bench-"))
    loop = build(tmp, "connloop")
    sock = tmp / "accept.sock"
    count = "5000" if quick else "20000"
    port, elsewhere = free_port(), free_port()
    # fewer TCP connections: each leaves a port in TIME_WAIT for a minute, and once
    # they run short every connect searches longer for one
    tcp = [loop, "tcp", "127.0.0.1", str(port), str(int(count) // 4)]
    converted = [loop, "tcp", "127.0.0.1", "9", count]
    wrapped = {
        # every connection converts: sockets start as Unix sockets
        "every connect": ([f"out,path={sock}"], converted),
        # a rule with conditions that every connection meets
        "addr= rule, met": ([f"out,addr=127.0.0.0/8,path={sock}"], converted),
        # a rule with conditions that no connection meets: all stay TCP
        "port= rule, unmet": ([f"out,port={elsewhere},path={sock}"], tcp),
    }
    shims = {"": None} if not old_shim else {"": None, "old: ": old_shim}

    def run(rules: list[str], args: list[str], shim: str | None
            ) -> Callable[[], tuple[float, float]]:
        env = {**os.environ, "UNIXIFY_SHIM": shim} if shim else None
        command = [*unixify(), *(a for rule in rules for a in ("-r", rule)), *args]
        return lambda: run_pair(command, env)

    variants = {"native unix": lambda: run_pair([loop, "unix", str(sock), count]),
                "plain tcp": lambda: run_pair(tcp)}
    for prefix, shim in shims.items():
        for name, (rules, args) in wrapped.items():
            variants[prefix + name] = run(rules, args, shim)
    with background([loop, "server", str(sock)]), background([loop, "tcpserver", str(port)]):
        wait_until(sock.is_socket, "accept loop")
        wait_until(lambda: tcp_ready(port), "tcp accept loop")
        results = interleave_cpu(variants, rounds)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nconnection setup: {count} x socket+connect+close ({tcp[-1]} on TCP), medians "
          f"of {rounds} rounds")
    print(f"  {'':<26} {'wall ns':>9} {'/unix':>7} {'/tcp':>7} {'CPU ns':>9} {'/unix':>7} "
          f"{'/tcp':>7} {'spread':>7}")
    unix, plain = results["native unix"][0], results["plain tcp"][0]
    unix_cpu, plain_cpu = results["native unix"][1], results["plain tcp"][1]
    for name, (wall, cpu, spread) in results.items():
        print(f"  {name:<26} {wall:>9.1f} {wall / unix:6.3f}x {wall / plain:6.3f}x "
              f"{cpu:>9.1f} {cpu / unix_cpu:6.3f}x {cpu / plain_cpu:6.3f}x {spread:7.1%}")
    for prefix in shims:
        def ratio(name: str, base: float, prefix: str = prefix) -> float:
            return results[prefix + name][0] / base

        if prefix:
            print(f"  {prefix}every connect / native unix {ratio('every connect', unix):.3f}, "
                  f"addr= rule met / native unix {ratio('addr= rule, met', unix):.3f}, "
                  f"port= rule unmet / plain tcp {ratio('port= rule, unmet', plain):.3f}")
            continue
        targets.check("every connect / native unix (time)", ratio("every connect", unix),
                      "<=", 1.15)
        targets.check("addr= rule met / native unix (time)", ratio("addr= rule, met", unix),
                      "<=", 1.15)
        targets.check("port= rule unmet / plain tcp (time)",
                      ratio("port= rule, unmet", plain), "<=", 1.1)


def bench_datagram(rounds: int, quick: bool, targets: Targets) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ufy-bench-"))
    ping = build(tmp, "udpping")
    count = "20000" if quick else "100000"
    native, converted = tmp / "native.sock", tmp / "conv.sock"
    conv_port, udp_port = free_port(), free_port()

    with background([ping, "server", f"unix:{native}"]), \
         background([*unixify(), "-r", f"in,udp,path={converted}", ping, "server",
                     f"127.0.0.1:{conv_port}"]), \
         background([ping, "server", f"127.0.0.1:{udp_port}"]):
        wait_until(native.is_socket, "native datagram server")
        wait_until(converted.is_socket, "converted datagram server")
        results = interleave({
            "native unix": lambda: run_number([ping, "client", f"unix:{native}", count]),
            "unixify (udp->unix)": lambda: run_number([*unixify(), "-r",
                                                       f"out,udp,path={converted}", ping,
                                                       "client", f"127.0.0.1:{conv_port}",
                                                       count]),
            "plain udp": lambda: run_number([ping, "client", f"127.0.0.1:{udp_port}", count]),
        }, rounds)
    shutil.rmtree(tmp, ignore_errors=True)
    report(f"datagrams: {count} x sendto+recvfrom round trips", "ns per round trip",
           results, "native unix")
    targets.check("unixify / native unix (time)",
                  results["unixify (udp->unix)"] / results["native unix"], "<=", 1.2)


# A TCP accept loop for scale only (Python is fast enough: accept and close).
ACCEPT_LOOP = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4096)
while True:
    s.accept()[0].close()
"""


def bench_launcher(rounds: int, quick: bool, targets: Targets) -> None:
    runs = 10 if quick else 30

    def timed(args: list[str]) -> Callable[[], float]:
        def measure() -> float:
            start = time.perf_counter()
            for _ in range(runs):
                subprocess.run(args, check=True)
            return (time.perf_counter() - start) / runs * 1000
        return measure

    results = interleave({
        "python3 -c pass": timed([sys.executable, "-c", "pass"]),
        "unixify ... true": timed([*unixify(), "-r", "in,path=/tmp/unused.sock", "true"]),
    }, rounds)
    report(f"launcher start ({runs} runs a round)", "ms", results, "python3 -c pass")
    targets.check("unixify start / python start",
                  results["unixify ... true"] / results["python3 -c pass"], "<=", 1.5)


def rule_set(path: Path, last: str, count: int) -> Path:
    """count rules, last one last; the others are for other ports, as when a program's
    many listeners each get a rule."""
    decoys = (f"out,port={1024 + i % 30000},path=/tmp/unused-%p.sock" for i in range(count - 1))
    path.write_text("\n".join([*decoys, last]) + "\n")
    return path


def shim_environment(rules: Path) -> dict[str, str]:
    """The environment the launcher gives a program for these rules."""
    from unixify.shim import library_path

    show = 'printf %s "$UNIXIFY_RULES"'
    value = subprocess.run([*unixify(), "-f", str(rules), "sh", "-c", show],
                           capture_output=True, text=True, check=True).stdout
    return {**os.environ, "LD_PRELOAD": library_path(), "UNIXIFY_RULES": value}


def bench_rules(rounds: int, quick: bool, targets: Targets) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ufy-bench-"))
    loop = build(tmp, "connloop")
    sock = tmp / "accept.sock"
    count = "5000" if quick else "20000"
    port = 31999  # above the decoys' ports; nothing listens: every connect converts
    last = f"out,port={port},path={sock}"
    many = shim_environment(rule_set(tmp / "many", last, 100_000))
    one = shim_environment(rule_set(tmp / "one", last, 1))
    client = [loop, "tcp", "127.0.0.1", str(port)]

    def started(env: dict[str, str]) -> Callable[[], float]:
        def measure() -> float:
            start = time.perf_counter()
            subprocess.run([*client, "1"], env=env, check=True, stdout=subprocess.DEVNULL)
            return (time.perf_counter() - start) * 1000
        return measure

    with background([loop, "server", str(sock)]):
        wait_until(sock.is_socket, "accept loop")
        results = interleave({"1 rule": lambda: run_number([*client, count], one),
                              "100,000 rules": lambda: run_number([*client, count], many)},
                             rounds)
        report(f"connection setup: {count} x socket+connect+close, the last rule converts",
               "ns per connection", results, "1 rule")
        targets.check("100,000 rules / 1 rule (time)",
                      results["100,000 rules"] / results["1 rule"], "<=", 1.1)
        start = interleave({"1 rule": started(one), "100,000 rules": started(many)}, rounds)
    report("program start and one connection (rules read at the first socket call)",
           "ms", start, "1 rule")
    print(f"  100,000 rules load in {start['100,000 rules'] - start['1 rule']:.1f} ms")
    shutil.rmtree(tmp, ignore_errors=True)


HAPROXY = """\
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend front
    bind 127.0.0.1:{front}
    maxconn 4096
    default_backend back
backend back
    server direct 127.0.0.1:{direct}
"""


def bench_dispatch(rounds: int, quick: bool, targets: Targets) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ufy-bench-"))
    serve = build(tmp, "connserve")
    client = build(tmp, "connclient", "-pthread")
    count = "5000" if quick else "20000"
    direct, via_a, via_b, via_haproxy, via_socat = (free_port() for _ in range(5))
    conf = tmp / "dispatch.conf"
    conf.write_text(f"listen,addr=127.0.0.1,port={via_a},backlog=4096\n"
                    f"listen,addr=127.0.0.1,port={via_b},backlog=4096\n"
                    f"control,path={tmp}/ctl\nallow,slot=1,uid={os.getuid()}\n"
                    f"port={via_a},send={tmp}/a.sock\nport={via_b},slot=1\n")
    (tmp / "haproxy.cfg").write_text(HAPROXY.format(front=via_haproxy, direct=direct))
    haproxy, socat = shutil.which("haproxy"), shutil.which("socat")
    lost: dict[str, float] = {}
    p99: dict[str, list[float]] = {}

    def measure(name: str, port: int) -> Callable[[], float]:
        def run() -> float:
            out = subprocess.run([client, "127.0.0.1", str(port), "64", count],
                                 capture_output=True, text=True, check=True).stdout.split()
            lost[name] = lost.get(name, 0) + float(out[2])
            p99.setdefault(name, []).append(float(out[1]))
            return float(out[0])
        return run

    with contextlib.ExitStack() as stack:
        stack.enter_context(background([serve, "tcp", str(direct)]))
        stack.enter_context(background([serve, "a", f"{tmp}/a.sock"]))
        stack.enter_context(background([*unixify(), "dispatch", str(conf)]))
        wait_until(lambda: tcp_ready(direct) and tcp_ready(via_b), "servers")
        stack.enter_context(background([serve, "b", f"{tmp}/ctl", "1"]))
        variants = {"direct": measure("direct", direct),
                    "dispatch (A)": measure("dispatch (A)", via_a),
                    "dispatch (B)": measure("dispatch (B)", via_b)}
        if haproxy:
            stack.enter_context(background([haproxy, "-db", "-f", str(tmp / "haproxy.cfg")]))
            wait_until(lambda: tcp_ready(via_haproxy), "haproxy")
            variants["haproxy tcp"] = measure("haproxy tcp", via_haproxy)
        if socat:
            stack.enter_context(background([socat, f"TCP-LISTEN:{via_socat},bind=127.0.0.1,"
                                            "fork,reuseaddr,backlog=4096",
                                            f"TCP:127.0.0.1:{direct}"]))
            wait_until(lambda: tcp_ready(via_socat), "socat")
            variants["socat fork"] = measure("socat fork", via_socat)
        time.sleep(0.5)  # the protocol B server registers
        results = interleave(variants, rounds)
    shutil.rmtree(tmp, ignore_errors=True)
    report(f"dispatch: {count} short connections from 64 clients", "connections/s",
           results, "direct")
    print("  p99 connect-to-first-byte (median of rounds, us) and connections lost:")
    for name in results:
        print(f"  {name:<22} {statistics.median(p99[name]):>10.0f}   lost {lost[name]:.0f}")
    median_p99 = {name: statistics.median(values) for name, values in p99.items()}
    targets.check("dispatch (A) / direct (rate)", results["dispatch (A)"] / results["direct"],
                  ">=", 0.9)
    if "haproxy tcp" in results:
        targets.check("dispatch (A) / haproxy (rate)",
                      results["dispatch (A)"] / results["haproxy tcp"], ">=", 1.5)
    targets.check("dispatch (A) / direct (p99)",
                  median_p99["dispatch (A)"] / median_p99["direct"], "<=", 1.2)
    targets.check("dispatch lost connections", lost["dispatch (A)"] + lost["dispatch (B)"],
                  "<=", 0)


def build_go(tmp: Path) -> str | None:
    go = shutil.which("go")
    if not go:
        return None
    binary = tmp / "go_http"
    env = dict(os.environ, CGO_ENABLED="0", GO111MODULE="off", GOFLAGS="",
               GOCACHE=str(tmp / "gocache"), GOPATH=str(tmp / "gopath"), HOME=str(tmp))
    subprocess.run([go, "build", "-o", str(binary),
                    str(HERE.parent / "tests" / "helpers" / "go_http.go")],
                   check=True, env=env, cwd=str(tmp))
    return str(binary)


def bench_seccomp(rounds: int, quick: bool, targets: Targets) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ufy-bench-"))
    server_loop = build(tmp, "connloop")
    loop = str(tmp / "connloop-static")
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-static", "-o", loop,
                    str(HERE / "connloop.c")], check=True)
    sock = tmp / "accept.sock"
    count = "5000" if quick else "20000"
    with background([server_loop, "server", str(sock)]):
        wait_until(sock.is_socket, "accept loop")
        results = interleave({
            "native unix (static)": lambda: run_number([loop, "unix", str(sock), count]),
            "seccomp (ipv4->unix)": lambda: run_number(
                [*unixify(), "-r", f"out,path={sock}", loop, "tcp", "127.0.0.1", "9",
                 count]),
        }, rounds)
    report(f"static C connection setup: {count} x socket+connect+close", "ns per connection",
           results, "native unix (static)")
    targets.check("seccomp static connect / native unix (time)",
                  results["seccomp (ipv4->unix)"] / results["native unix (static)"], "<=", 1.5)
    go_http = build_go(tmp)
    if go_http is None:
        print("seccomp: go not installed; Go benchmarks skipped")
        shutil.rmtree(tmp, ignore_errors=True)
        return
    requests = "1000" if quick else "3000"
    native_port, conv_port = free_port(), free_port()
    go_sock = tmp / "go.sock"
    out_rule = f"out,tcp,port={conv_port},path={go_sock}"

    def get(port: int, keep: bool, wrap: bool) -> Callable[[], float]:
        args = [go_http, "bench", f"http://127.0.0.1:{port}/", requests]
        args += ["keep"] if keep else []
        return lambda: run_number([*unixify(), "-r", out_rule, *args] if wrap else args)

    with background([go_http, "serve", f"127.0.0.1:{native_port}"]), \
         background([*unixify(), "-r", f"in,tcp,port={conv_port},path={go_sock}", go_http,
                     "serve", f"127.0.0.1:{conv_port}"]):
        wait_until(lambda: tcp_ready(native_port), "native Go server")
        wait_until(go_sock.is_socket, "converted Go server")
        fresh = interleave({"native tcp": get(native_port, False, False),
                            "seccomp": get(conv_port, False, True)}, rounds)
        kept = interleave({"native tcp": get(native_port, True, False),
                           "seccomp": get(conv_port, True, True)}, rounds)
    shutil.rmtree(tmp, ignore_errors=True)
    report(f"Go net/http, new connection per request: {requests} requests",
           "us per request", fresh, "native tcp")
    targets.check("seccomp Go new connection / native tcp (time)",
                  fresh["seccomp"] / fresh["native tcp"], "<=", 1.3)
    report(f"Go net/http, keep-alive: {requests} requests", "us per request", kept,
           "native tcp")
    targets.check("seccomp Go keep-alive / native tcp (time)",
                  kept["seccomp"] / kept["native tcp"], "<=", 1.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="?", default="all",
                        choices=["datapath", "setup", "datagram", "launcher", "rules",
                                 "dispatch", "seccomp", "all"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller runs (for CI)")
    parser.add_argument("--old-shim", metavar="LIB",
                        help="setup: also run the unixify variants with this build of the "
                        "shim (UNIXIFY_SHIM), for before and after in one run")
    args = parser.parse_args()
    targets = Targets()
    benches: dict[str, Callable[[int, bool, Targets], None]] = {
        "datapath": bench_datapath,
        "setup": lambda r, q, t: bench_setup(r, q, t, args.old_shim), "datagram": bench_datagram,
        "launcher": bench_launcher, "rules": bench_rules, "seccomp": bench_seccomp,
        "dispatch": bench_dispatch}
    for name, bench in benches.items():
        if args.which in (name, "all"):
            bench(args.rounds, args.quick, targets)
    if targets.missed:
        print(f"\nmissed targets: {', '.join(targets.missed)}")
        return 1
    print("\nall targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
