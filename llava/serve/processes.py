"""Start, wait for and stop serving processes on this machine (used by the tests and local demos).

with ServiceProcess.start("controller", "llava.serve.controller", ["--port", str(port)],
                          url=f"http://127.0.0.1:{port}", log_dir=tmp) as ctl:
    ctl.wait_ready("/list_models")

`secret=` hands the stack's shared secret to the child in its environment ($LLAVA_SERVE_SECRET, never
on the command line, where `ps` would show it) and `wait_ready` presents it. `release_freed_memory`
gives the memory freed by finished requests back to the operating system (servers call it when idle).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from llava.serve import trust


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"
):
    """Poll `predicate` until it returns a truthy value (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout:g}s")
        time.sleep(interval)


class ServiceProcess:
    """A `python -m <module>` child process with its output in a log file."""

    def __init__(
        self, name: str, popen: subprocess.Popen, url: str, log_path: Path, secret: str | None = None
    ):
        self.name, self.popen, self.url, self.log_path = name, popen, url, log_path
        self.secret = secret

    @classmethod
    def start(
        cls,
        name: str,
        module: str,
        args: list[str],
        url: str,
        log_dir: str | os.PathLike,
        env: dict | None = None,
        cwd: str | os.PathLike | None = None,
        secret: str | None = None,
    ) -> ServiceProcess:
        log_path = Path(log_dir) / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **(env or {})}
        if secret:
            full_env[trust.ENV] = secret
        secret = full_env.get(trust.ENV) or None
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        return cls(name, popen, url, log_path, secret)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, path: str = "/", method: str = "post", timeout: float = 120.0) -> None:
        """Wait until `url + path` answers HTTP 200; fail early, with the log, if the process dies."""

        def ready():
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode}; log:\n{self.log_tail()}"
                )
            try:
                headers = trust.secret_headers(self.secret)
                return (
                    requests.request(method, self.url + path, headers=headers, timeout=2).status_code == 200
                )
            except requests.exceptions.RequestException:
                return False

        try:
            wait_until(ready, timeout, 0.2, f"{self.name} ready at {self.url}{path}")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; log:\n{self.log_tail()}") from None

    def kill(self) -> None:
        """Hard kill (SIGKILL), as a crash would."""
        if self.alive():
            self.popen.kill()
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in `timeout` seconds."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL(None).malloc_trim  # the process's own symbols, libc's among them
    except (OSError, AttributeError, TypeError):
        return None


def release_freed_memory() -> bool:
    """Return freed heap memory to the OS (glibc `malloc_trim(0)`, every arena); False where unsupported.

    Why: after a burst of requests with large images, the memory CPython and PIL freed stays in glibc's
    per-thread arenas (and, once a large block was freed, under its raised mmap threshold), so a worker
    kept hundreds of MB it no longer used; trimming when idle gives it back.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class IdleTrim:
    """Calls `release_freed_memory` once a server has stayed idle `delay` seconds after some work.

    `went_idle()` is called when the last request in flight ends; `is_idle()` is asked again when the
    delay is over, so a server under steady load never pays for trimming."""

    def __init__(
        self, is_idle: Callable[[], bool], delay: float = 0.5, release: Callable = release_freed_memory
    ):
        self.is_idle, self.delay, self.release = is_idle, delay, release
        self._lock = threading.Lock()
        self._pending = False

    def went_idle(self) -> None:
        with self._lock:
            if self._pending:
                return
            self._pending = True
        timer = threading.Timer(self.delay, self._run)
        timer.daemon = True
        timer.start()

    def _run(self) -> None:
        with self._lock:
            self._pending = False
        if self.is_idle():
            self.release()
