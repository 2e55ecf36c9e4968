"""The capture source: the device's own interface through tshark, streamed as rows of the loader's schema.

The Edge-IIoTset columns are tshark field names, so ``tshark -T fields`` with those fields yields the
dataset's rows. tshark writes tab-separated lines; commas and double quotes inside a value (a timestamp's
``Dec  7, 2026``, HTTP payloads) are respelled so that every line is one plain CSV row. Lines wait in a
bounded queue in memory, never in a file; when it is full, new lines are dropped and counted (load shed).
When tshark exits (a crash, an interface that went away) it is started again with backoff; it is also
restarted on purpose every ``rotate_seconds``, because tshark keeps dissection state for the whole capture.
"""

from __future__ import annotations

import collections
import logging
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iotad.data.schema import LABEL_COLUMN, RAW_COLUMNS, TYPE_COLUMN
from iotad.edge.sources import RawBlock

log = logging.getLogger(__name__)

#: The columns a capture produces: the schema without the labels (live traffic is unlabelled).
CAPTURE_COLUMNS: tuple[str, ...] = tuple(c for c in RAW_COLUMNS if c not in (LABEL_COLUMN, TYPE_COLUMN))


class CaptureError(RuntimeError):
    """tshark is missing or cannot be used."""


def tshark_fields(tshark: str = "tshark") -> set[str]:
    """The field names this tshark knows (``tshark -G fields``)."""
    out = subprocess.run([tshark, "-G", "fields"], capture_output=True, check=True, timeout=60).stdout
    return {line.split(b"\t")[2].decode() for line in out.splitlines() if line.startswith(b"F\t")}


def tshark_command(
    tshark: str,
    interface: str,
    fields: Sequence[str],
    *,
    capture_filter: str = "",
    decode_as: Sequence[str] = (),
    duration: float = 0.0,
) -> list[str]:
    cmd = [tshark, "-i", interface, "-l", "-n", "-Q", "-T", "fields", "-E", "separator=/t", "-E", "occurrence=f"]
    if capture_filter:
        cmd += ["-f", capture_filter]
    for rule in decode_as:  # e.g. tcp.port==11883,mqtt: MQTT on a port tshark does not guess
        cmd += ["-d", rule]
    if duration > 0:
        cmd += ["-a", f"duration:{int(duration)}"]
    for name in fields:
        cmd += ["-e", name]
    return cmd


class CaptureSource:
    """Packets of ``interface`` as unlabelled rows (the :class:`~iotad.edge.sources.Source` protocol).

    Parameters
    ----------
    capture_filter
        A BPF capture filter (``tshark -f``), e.g. to leave out the device's own federation traffic.
    decode_as
        ``tshark -d`` rules for protocols on ports tshark does not guess.
    max_backlog_bytes
        Bound of the in-memory queue; lines that do not fit are dropped and counted.
    rotate_seconds
        Start a fresh tshark this often (0: never); rows flow on, the window statistics carry over.
    """

    MAX_LINE = 1 << 20  # an Edge-IIoTset row is about 1 kB; a longer line is dropped and counted

    def __init__(
        self,
        interface: str,
        *,
        tshark: str = "tshark",
        capture_filter: str = "",
        decode_as: Sequence[str] = (),
        max_backlog_bytes: int = 64 << 20,
        rotate_seconds: float = 3600.0,
        backoff: tuple[float, float] = (1.0, 30.0),
    ) -> None:
        path = shutil.which(tshark)
        if path is None:
            raise CaptureError(f"{tshark} not found: install it (Debian: apt-get install tshark)")
        try:
            known = tshark_fields(path)
        except (OSError, subprocess.SubprocessError) as e:
            raise CaptureError(f"{path} -G fields failed: {e}") from e
        fields = [c for c in CAPTURE_COLUMNS if c in known]
        missing = [c for c in CAPTURE_COLUMNS if c not in known]
        if missing:  # an older or newer tshark: those columns stay empty, as for a packet without them
            log.warning("this tshark lacks %d schema fields, captured as empty: %s", len(missing), ", ".join(missing))
        self.interface = interface
        self.header = fields + missing
        self._suffix = b"," * len(missing) + b"\n"
        self.command = tshark_command(path, interface, fields, capture_filter=capture_filter, decode_as=decode_as,
                                      duration=rotate_seconds)
        self.max_backlog_bytes = int(max_backlog_bytes)
        self.backoff = backoff
        self._lines: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._shed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._first = True
        self.rows = 0  # lines taken from tshark
        self.starts = 0  # tshark processes started
        self.failures = 0  # of which ended other than by rotation
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._reader = threading.Thread(target=self._run, name=f"capture-{interface}", daemon=True)
        self._reader.start()

    # -- the reader thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            started = time.monotonic()
            rc = self._capture_once()
            if self._stop.is_set():
                return
            if rc == 0:  # autostop after rotate_seconds: start the next one at once
                log.info("capture on %s: tshark rotated after %.0f s", self.interface, time.monotonic() - started)
                delay = self.backoff[0]
                continue
            self.failures += 1
            if time.monotonic() - started > 60:
                delay = self.backoff[0]  # it ran for a while: a new failure, not the same one again
            log.warning("capture on %s: tshark exited with %s (%s); starting it again in %.0f s", self.interface,
                        rc, " | ".join(self.stderr_tail) or "no message", delay)
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.backoff[1])

    def _capture_once(self) -> int | None:
        try:
            proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except OSError as e:
            self.stderr_tail.append(str(e))
            return None
        self._proc = proc
        self.starts += 1
        if self._stop.is_set():  # close() ran while it started
            proc.terminate()
        assert proc.stdout is not None and proc.stderr is not None
        errors = threading.Thread(target=self._read_stderr, args=(proc.stderr,), daemon=True)
        errors.start()
        dropping = False  # in the rest of an overlong line
        for line in iter(lambda: proc.stdout.readline(self.MAX_LINE), b""):  # type: ignore[union-attr]
            whole = line.endswith(b"\n")
            if dropping or not whole:
                with self._lock:
                    self._shed += 0 if dropping else 1
                dropping = not whole
                continue
            row = line.rstrip(b"\r\n").replace(b",", b" ").replace(b'"', b"'").replace(b"\t", b",") + self._suffix
            with self._lock:
                self.rows += 1
                if self._bytes + len(row) > self.max_backlog_bytes:
                    self._shed += 1
                else:
                    self._lines.append(row)
                    self._bytes += len(row)
        rc = proc.wait()
        errors.join(5)
        return rc

    def _read_stderr(self, stream: object) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            text = raw.decode(errors="replace").strip()
            if text and "could be dangerous" not in text:  # tshark's warning when run as root
                self.stderr_tail.append(text)
                log.debug("tshark: %s", text)

    # -- the Source protocol --------------------------------------------------------------------------
    def read(self, max_rows: int) -> RawBlock | None:
        with self._lock:
            n = min(max_rows, len(self._lines))
            if n == 0:
                return None
            rows = [self._lines.popleft() for _ in range(n)]
            self._bytes -= sum(map(len, rows))
        first, self._first = self._first, False
        return RawBlock(b"".join(rows), self.header, new_stream=first)

    def backlog_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def take_shed_rows(self) -> int:
        with self._lock:
            shed, self._shed = self._shed, 0
        return shed

    def close(self) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reader.join(10)


def write_capture(
    interface: str,
    out: Path | None,
    *,
    count: int = 0,
    seconds: float = 0.0,
    stop: threading.Event | None = None,
    **options: Any,
) -> tuple[int, int]:
    """Capture ``interface`` into a CSV with the schema's header (``out`` None: standard output) until
    ``count`` rows, ``seconds`` or ``stop``. Returns (rows written, rows dropped). A device can record its
    own normal traffic this way to train on."""
    stop = stop or threading.Event()
    source = CaptureSource(interface, **options)
    deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
    written = shed = 0
    sink = open(out, "wb") if out is not None else sys.stdout.buffer  # noqa: SIM115 (closed below)
    try:
        sink.write(",".join(source.header).encode() + b"\n")
        while not stop.is_set() and time.monotonic() < deadline and (count <= 0 or written < count):
            block = source.read(count - written if count > 0 else 4096)
            shed += source.take_shed_rows()
            if block is None:
                stop.wait(0.05)
                continue
            sink.write(block.data)
            sink.flush()
            written += block.data.count(b"\n")
    except KeyboardInterrupt:
        pass
    finally:
        source.close()
        shed += source.take_shed_rows()
        if out is not None:
            sink.close()
    return written, shed
