"""Small helpers shared by the serving processes: logging, settings from the environment, messages."""

from __future__ import annotations

import logging
import os
import sys

from llava.constants import LOGDIR

# Same wording as the original, so users' scripts that look for it keep working.
server_error_msg = "**NETWORK ERROR DUE TO HIGH TRAFFIC. PLEASE REGENERATE OR REFRESH THIS PAGE.**"
moderation_msg = "YOUR INPUT VIOLATES OUR CONTENT MODERATION GUIDELINES. PLEASE TRY AGAIN."

_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


def build_logger(logger_name: str, logger_filename: str | None = None) -> logging.Logger:
    """A logger writing to stderr and, when `logger_filename` is given, to LOGDIR/logger_filename.

    Unlike the original, stdout/stderr are left alone (the CLI streams answers to stdout).
    Calling it twice for the same name does not add handlers twice.
    """
    logger = logging.getLogger(f"llava.serve.{logger_name}")
    logger.setLevel(logging.INFO)
    if getattr(logger, "_llava_configured", False):
        return logger
    formatter = logging.Formatter(fmt=_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(formatter)
    logger.addHandler(stream)
    if logger_filename:
        logdir = os.environ.get("LLAVA_LOGDIR", LOGDIR)
        os.makedirs(logdir, exist_ok=True)
        fh = logging.FileHandler(os.path.join(logdir, logger_filename), encoding="utf-8")
        fh.setFormatter(formatter)
        logger.addHandler(fh)
    logger.propagate = False
    logger._llava_configured = True  # type: ignore[attr-defined]
    return logger


def env_float(name: str, default: float) -> float:
    """A positive float from environment variable `name`, else `default` (clear error if malformed)."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not a number; unset it or give seconds"
        ) from None
    if value <= 0:
        raise ValueError(f"environment variable {name}={raw!r} must be > 0")
    return value


def pretty_print_semaphore(semaphore) -> str:
    if semaphore is None:
        return "None"
    return f"Semaphore(value={semaphore._value}, locked={semaphore.locked()})"


def offline_gradio_env() -> None:
    """Turn off Gradio/HF telemetry and update checks for this process (call before importing gradio)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_SSR_MODE", "False")
