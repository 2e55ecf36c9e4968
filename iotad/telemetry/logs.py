"""Logging for every iotad process: one line per event, once, as text or JSON.

- ``configure`` replaces Flower's own console handler (it also propagates to the root logger, so with a
  root handler every Flower line was printed twice) by one root handler; Flower's empty spacer lines are
  dropped. Flower's INFO lines always show.
- ``Relay`` copies a child process's output (Flower's colour codes stripped, spacer lines dropped) into
  the launcher's log, each line tagged with the device and the child's name.

Text lines: ``2026-12-08T00:41:07Z INFO device-1 supernode: message``. JSON lines (``--log-format json``,
``IOTAD_LOG_FORMAT=json``) hold ``ts, level, device, process, logger, msg``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from typing import IO

FORMATS = ("text", "json")
FORMAT_ENV = "IOTAD_LOG_FORMAT"
DEVICE_ENV = "IOTAD_DEVICE"
RELAYED_ENV = "IOTAD_LOG_RELAYED"  # set for a Relay's child: it prints "LEVEL: msg", the Relay adds the rest

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Flower's console format: "INFO :      msg", with timestamps "DEBUG 2026-12-08 00:41:07,123:      msg".
_FLOWER_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)(?: \d{4}-\d\d-\d\d [\d:,.]+)?\s*:\s?(.*)$")


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + "Z"


def render(fmt: str, t: float, level: str, msg: str, *, device: str = "", process: str = "",
           logger: str = "") -> str:
    """One log line in ``fmt`` (the same shape for the launcher's own records and relayed ones)."""
    if fmt == "relayed":
        return f"{level}: {msg}"
    if fmt == "json":
        obj = {"ts": _stamp(t), "level": level, "device": device or None, "process": process or None,
               "logger": logger or None, "msg": msg}
        return json.dumps({k: v for k, v in obj.items() if v is not None}, ensure_ascii=False)
    who = " ".join(x for x in (device, process and process + ":") if x)
    return f"{_stamp(t)} {level} {who + ' ' if who else ''}{msg}"


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str, device: str, process: str) -> None:
        super().__init__()
        self.fmt, self.device, self.process = fmt, device, process

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return render(self.fmt, record.created, record.levelname, msg, device=self.device,
                      process=self.process, logger=record.name if self.fmt == "json" else "")


def _not_blank(record: logging.LogRecord) -> bool:
    return bool(str(record.getMessage()).strip())


def configure(verbose: bool = False, fmt: str | None = None, *, service: bool = False, device: str | None = None,
              process: str = "", stream: IO[str] | None = None) -> None:
    """The root handler of this process; ``device`` defaults to ``$IOTAD_DEVICE``.

    Levels: a batch command logs warnings (``-v``: and INFO); a long-lived ``service`` (aggregator,
    device, agent) logs its INFO events (``-v``: and DEBUG)."""
    fmt = fmt or os.environ.get(FORMAT_ENV) or "text"
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    os.environ[FORMAT_ENV] = fmt  # a Relay in this process and our children use it too
    if os.environ.get(RELAYED_ENV):
        fmt = "relayed"
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(fmt, device if device is not None else os.environ.get(DEVICE_ENV, ""),
                                    process))
    handler.addFilter(_not_blank)
    # Flower's own level, whenever flwr gets imported: its import sets the "flwr" logger to DEBUG.
    flwr_level = logging.DEBUG if verbose else logging.INFO
    handler.addFilter(lambda r: r.levelno >= flwr_level or not r.name.startswith("flwr"))
    handler.set_name("iotad")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "iotad":  # ours from an earlier call; others (pytest's capture) stay
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose and service else
                  logging.INFO if verbose or service else logging.WARNING)
    _quiet_flower(verbose)


def _quiet_flower(verbose: bool) -> None:
    """Flower's lines through the root handler only (imported lazily: most commands never load flwr)."""
    flwr = logging.getLogger("flwr")
    flwr.setLevel(logging.DEBUG if verbose else logging.INFO)
    flwr.propagate = True
    if "flwr" not in sys.modules and "flwr.supercore.logger" not in sys.modules:
        # Flower adds its console handler when flwr.supercore.logger is first imported: remove it then.
        _FlowerHandlerRemover.install()
        return
    _drop_flower_console(flwr)


def _drop_flower_console(flwr: logging.Logger) -> None:
    for h in list(flwr.handlers):
        if type(h).__name__ == "ConsoleHandler":
            flwr.removeHandler(h)


class _FlowerHandlerRemover(logging.Filter):
    """Runs at Flower's first record, after its import added the console handler, and removes it (the
    record then reaches the root handler alone). Cheaper than importing flwr in every command."""

    _installed = False

    @classmethod
    def install(cls) -> None:
        if not cls._installed:
            logging.getLogger("flwr").addFilter(cls())
            cls._installed = True

    def filter(self, record: logging.LogRecord) -> bool:
        flwr = logging.getLogger("flwr")
        if any(type(h).__name__ == "ConsoleHandler" for h in flwr.handlers):
            _drop_flower_console(flwr)
        return True


def clean(line: str) -> tuple[str | None, str] | None:
    """(level, message) of one line a child printed; level None for a line without one (a traceback's
    continuation: it takes the level of the line before); None for Flower's empty spacer lines."""
    text = _ANSI.sub("", line).rstrip()
    if not text.strip():
        return None
    m = _FLOWER_LINE.match(text)
    if m:
        msg = m.group(2).strip()
        return (m.group(1), msg) if msg else None
    return None, text


class Relay(threading.Thread):
    """Copies one child's output into ``out`` line by line (see the module docstring)."""

    def __init__(self, source: IO[bytes], process: str, *, device: str = "", fmt: str | None = None,
                 out: IO[str] | None = None) -> None:
        super().__init__(name=f"relay-{process}", daemon=True)
        self.source, self.process, self.device = source, process, device
        self.fmt = fmt or os.environ.get(FORMAT_ENV) or "text"
        self.out = out or sys.stdout
        self.lines = 0

    def run(self) -> None:
        level = "INFO"
        with self.source:
            for raw in iter(self.source.readline, b""):
                parsed = clean(raw.decode("utf-8", errors="replace"))
                if parsed is None:
                    continue
                level = parsed[0] or level
                self.lines += 1
                try:
                    self.out.write(render(self.fmt, time.time(), level, parsed[1], device=self.device,
                                          process=self.process) + "\n")
                    self.out.flush()
                except (OSError, ValueError):  # our stdout is gone: keep draining so the child never blocks
                    continue
