"""Start, wait for and stop serving processes on this machine (used by the tests and local demos).

with ServiceProcess.start("controller", "llava.serve.controller", ["--port", str(port)],
                          url=f"http://127.0.0.1:{port}", log_dir=tmp) as ctl:
    ctl.wait_ready("/list_models")
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests


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

    def __init__(self, name: str, popen: subprocess.Popen, url: str, log_path: Path):
        self.name, self.popen, self.url, self.log_path = name, popen, url, log_path

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
    ) -> ServiceProcess:
        log_path = Path(log_dir) / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **(env or {})}
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
        return cls(name, popen, url, log_path)

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
                return requests.request(method, self.url + path, timeout=2).status_code == 200
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
