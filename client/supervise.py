"""Run the processes of a stack and restart any that dies, as compose's `restart: unless-stopped`.

`mnist up` hands its programs (Redis, gunicorn, the workers, nginx) to a `Supervisor`. Each runs
in a session of its own, so that a Ctrl-C in the terminal reaches the supervisor only, which then
stops them in order; their output is printed line by line behind their names. When a program
exits, whatever it left in its session is killed too (an RQ work horse, gunicorn's or nginx's
worker processes: a container's processes die with it the same way), one line says so, and it is
started again after a delay that doubles from `RESTART_DELAY` up to `MAX_RESTART_DELAY`, and falls
back to `RESTART_DELAY` once the program had run `RESET_AFTER` seconds. Only `stop()` ends it:
SIGTERM to each program, SIGKILL to whatever is left after `STOP_TIMEOUT` seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

#: Seconds before the first restart of a program that exited.
RESTART_DELAY = 0.5
#: Seconds between restarts at most, however often a program exits.
MAX_RESTART_DELAY = 30.0
#: Seconds a program must have run for its next restart to wait `RESTART_DELAY` again.
RESET_AFTER = 10.0
#: Seconds programs get to stop after SIGTERM before they are killed (gunicorn gives its requests 20).
STOP_TIMEOUT = 25.0
#: Seconds between two looks at the programs.
POLL_INTERVAL = 0.1


@dataclass(frozen=True)
class Program:
    """One process of the stack: a name, a command line, its environment and folder.

    Programs stop in order of `stage`, highest first (those of one stage together): Redis has a
    lower stage than the processes that checkpoint to it when they stop.
    """

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    stage: int = 1


@dataclass
class _Running:
    program: Program
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    delay: float = 0.0
    restart_at: float = 0.0
    reader: threading.Thread | None = None


class Supervisor:
    """Start programs, restart those that exit, and stop them all on `stop()`."""

    def __init__(
        self,
        out: IO[str] | None = None,
        *,
        restart_delay: float = RESTART_DELAY,
        max_restart_delay: float = MAX_RESTART_DELAY,
        reset_after: float = RESET_AFTER,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.out = out if out is not None else sys.stdout
        self.restart_delay, self.max_restart_delay = restart_delay, max_restart_delay
        self.reset_after, self.stop_timeout = reset_after, stop_timeout
        self._running: list[_Running] = []
        # Plain flags, not threading.Event: a signal handler sets them, and Event.set() there
        # could wait forever for the lock that the interrupted Event.wait() holds.
        self._stop = False
        self._force = False
        self._lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop

    def request_stop(self, *_: object) -> None:
        """Ask `run` to stop everything (a second request kills at once); safe in a signal handler."""
        self._force = self._stop
        self._stop = True

    def add(self, program: Program) -> None:
        """Start `program` now and supervise it from then on."""
        entry = _Running(program, delay=self.restart_delay)
        self._running.append(entry)
        self._spawn(entry)

    def pid(self, name: str) -> int | None:
        """Return the pid of the program `name` while it runs, else None."""
        for entry in self._running:
            if entry.program.name == name and entry.popen is not None and entry.popen.poll() is None:
                return entry.popen.pid
        return None

    def log(self, name: str, line: str) -> None:
        """Print one line behind `name` and the time."""
        width = max((len(e.program.name) for e in self._running), default=0)
        width = max(width, len("supervise"))
        with self._lock:
            try:
                self.out.write(f"{time.strftime('%H:%M:%S')} {name:<{width}} | {line}\n")
                self.out.flush()
            except (OSError, ValueError):
                pass  # the terminal went away: the stack keeps running until it is stopped

    def run(self) -> None:
        """Restart programs that exit until a stop is requested, then stop every program."""
        try:
            while not self._stop:
                now = time.monotonic()
                for entry in self._running:
                    if entry.popen is None:
                        if now >= entry.restart_at:
                            self._spawn(entry)
                    elif entry.popen.poll() is not None:
                        self._exited(entry, now)
                time.sleep(POLL_INTERVAL)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop every program, highest stage first: SIGTERM, then SIGKILL after `stop_timeout` s."""
        self._stop = True
        for stage in sorted({e.program.stage for e in self._running}, reverse=True):
            group = [e for e in self._running if e.program.stage == stage and e.popen is not None]
            for entry in group:
                assert entry.popen is not None
                if entry.popen.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        entry.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            for entry in group:
                assert entry.popen is not None
                while entry.popen.poll() is None and time.monotonic() < deadline and not self._force:
                    time.sleep(POLL_INTERVAL)
                kill_session(entry.popen.pid)
                if entry.popen.poll() is None:
                    entry.popen.wait()
                self._join_reader(entry)
                entry.popen = None

    def _spawn(self, entry: _Running) -> None:
        program = entry.program
        popen = subprocess.Popen(
            program.argv,
            env=dict(program.env),
            cwd=program.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        entry.popen, entry.started = popen, time.monotonic()
        if popen.stdout is not None:
            entry.reader = threading.Thread(
                target=self._copy, args=(program.name, popen.stdout), name=program.name, daemon=True
            )
            entry.reader.start()

    def _copy(self, name: str, stream: IO[bytes]) -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                self.log(name, raw.decode(errors="replace").rstrip("\n"))

    def _join_reader(self, entry: _Running) -> None:
        # The pipe ends when the last process holding it exits, killed with its session just before.
        if entry.reader is not None:
            entry.reader.join(2.0)
            entry.reader = None

    def _exited(self, entry: _Running, now: float) -> None:
        assert entry.popen is not None
        pid, code = entry.popen.pid, entry.popen.returncode
        kill_session(pid)  # what it left behind goes with it, as in a container
        self._join_reader(entry)
        entry.popen = None
        ran = now - entry.started
        if ran >= self.reset_after:
            entry.delay = self.restart_delay
        entry.restarts += 1
        entry.restart_at = now + entry.delay
        self.log(
            "supervise",
            f"{entry.program.name} (pid {pid}) {describe_exit(code)} after {ran:.1f} s:"
            f" restarting in {entry.delay:g} s (restart {entry.restarts})",
        )
        entry.delay = min(entry.delay * 2, self.max_restart_delay)


def describe_exit(code: int | None) -> str:
    """Return how a process ended, from its return code ("exited with status 1", "killed by SIGKILL")."""
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def session_members(sid: int) -> list[int]:
    """Return the pids of the processes in session `sid` (Linux: read from /proc; else [])."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command's closing parenthesis: state, ppid, pgrp, session, …
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 3 and fields[3] == str(sid):
            members.append(int(entry.name))
    return members


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (the session a program started in, by its pid)."""
    if not Path("/proc/self/stat").exists():  # no /proc: the leader's process group is what it reaches
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sid, signal.SIGKILL)
        return
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
