"""Running `unixify dispatch` and its receivers in tests (test_dispatch*.py, bench)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import HELPERS, Processes, unixify_command, wait_for

RECEIVER = str(HELPERS / "dispatch_receiver.py")


class Output:
    """The lines a process writes (stdout and stderr together), collected as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 20.0, count: int = 1) -> None:
        def found() -> bool:
            if self.proc.poll() is not None:
                time.sleep(0.2)  # the last lines
                if sum(needle in line for line in self.lines) < count:
                    raise AssertionError(f"{self.proc.args!r} exited "
                                         f"({self.proc.returncode}) before {needle!r}:\n"
                                         + self.text())
            return sum(needle in line for line in list(self.lines)) >= count

        try:
            wait_for(found, timeout, f"{needle!r}")
        except AssertionError as err:
            raise AssertionError(f"{err}; output so far:\n{self.text()}") from None

    def count(self, needle: str) -> int:
        return sum(needle in line for line in list(self.lines))


def start(procs: Processes, args: list[str], prefix: list[str] | None = None,
          env: dict[str, str] | None = None) -> Output:
    proc = procs.start([*(prefix or []), *args], stderr=subprocess.STDOUT, env=env)
    return Output(proc)


def dispatcher(procs: Processes, conf: Path, content: str, prefix: list[str] | None = None,
               env: dict[str, str] | None = None) -> Output:
    conf.write_text(content)
    out = start(procs, [*unixify_command(), "dispatch", "-v", str(conf)], prefix, env)
    out.wait_for("ready:")
    return out


def receiver(procs: Processes, *args: str, prefix: list[str] | None = None,
             env: dict[str, str] | None = None) -> Output:
    out = start(procs, [sys.executable, RECEIVER, *args], prefix, env)
    out.wait_for("ready")
    return out


def ask(host: str, port: int, timeout: float = 10.0) -> str:
    """Connect, read to the end: the receiver's line.  Raises ConnectionError when the
    dispatcher refuses (a reset, or a close without a word)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    if not data:
        raise ConnectionAbortedError("closed without an answer")
    return data.decode()


def status(conf: Path) -> dict[str, str]:
    """`unixify dispatch --status`: its lines as a map of the words before the last one."""
    result = subprocess.run([*unixify_command(), "dispatch", "--status", str(conf)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    out = {}
    for line in result.stdout.splitlines():
        words = line.split()
        if words[0] in ("receiver", "slot"):
            out[f"{words[0]} {words[1]}"] = line
        else:
            out[" ".join(words[:-1])] = words[-1]
    return out


def loop_pid(dispatch_pid: int) -> int:
    """The pid of the C loop, the dispatcher front's child."""
    children = Path(f"/proc/{dispatch_pid}/task/{dispatch_pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def stop(out: Output, timeout: float = 30.0) -> int:
    out.proc.send_signal(signal.SIGTERM)
    code = out.proc.wait(timeout)
    out.thread.join(5)
    return code


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def hammer(port: int, clients: int, total: int, watch_pid: int,
           timeout: float = 60) -> tuple[list[str], int, int]:
    """total short connections to 127.0.0.1:port from clients threads at once, each
    answer checked: (the errors, the connections answered, the most fds watch_pid held
    meanwhile)."""
    errors: list[str] = []
    done = [0]
    most = 0

    def client(n: int) -> None:
        for _ in range(total // clients + (n < total % clients)):
            try:
                if not ask("127.0.0.1", port, timeout).startswith("hello "):
                    errors.append("wrong answer")
                done[0] += 1
            except OSError as err:
                errors.append(repr(err))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        most = max(most, fd_count(watch_pid))
        time.sleep(0.005)
    for thread in threads:
        thread.join()
    return errors, done[0], most
