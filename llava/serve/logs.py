"""The log of a serving process: stderr, plus a file under $LLAVA_LOGDIR when a file name is given."""

from __future__ import annotations

import logging
import os
import sys

from llava.constants import LOGDIR

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
