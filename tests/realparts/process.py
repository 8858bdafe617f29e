"""What every real part needs to run as a child process: a port, its log, a clean stop."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["STOP_TIMEOUT", "free_port", "log_tail", "stop_process", "wait_for_interrupt"]

STOP_TIMEOUT = 5.0
LOG_TAIL_CHARS = 4000


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(log_file: Path) -> str:
    """The end of a child's log, for an error message."""
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return text[-LOG_TAIL_CHARS:] or "(empty log)"


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process, then SIGKILL it when it has not exited after `timeout` s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for_interrupt() -> None:
    """Block until Ctrl-C (for running a part by hand)."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
