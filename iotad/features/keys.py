"""Stream keys and time from a packet row's identifier fields.

Identifiers (addresses, ports, stream numbers, capture time) never become inputs: they
only say which rows belong to the same host, host pair or connection, and how far
apart in time they are. Every empty spelling (``0``, ``0.0``, ``0x00000000`` ...)
becomes the same missing key, so keys cannot leak how a capture spells empty fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from iotad.data.schema import EMPTY_SPELLINGS

Key = object  # a hashable identity: a string or a tuple of strings


def _clean(values: np.ndarray | Sequence[object]) -> list[str]:
    empty = EMPTY_SPELLINGS
    out = []
    for v in values:
        s = v.strip() if isinstance(v, str) else ""
        out.append("" if s in empty else s)
    return out


def parse_clock(values: np.ndarray | Sequence[object]) -> npt.NDArray[np.float64]:
    """Seconds since midnight of ``frame.time`` values (`` 2021 23:58:21.314757000 ``, ``23:58:21.3``, or
    a live capture's ``Dec  7  2026 19:13:24.425191345 UTC``).

    The exports truncate the date, so only the time of day is reliable; a value without a readable
    ``HH:MM:SS[.frac]`` at its end is NaN (the caller holds the stream clock there and counts it).
    """
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            continue
        # The clock is the last token with two colons: tshark's own spelling ends with a zone name.
        clock = next((t for t in reversed(v.split()) if t.count(":") == 2), "")
        parts = clock.split(":")
        if len(parts) != 3:
            continue
        try:
            h, m, s = int(parts[0]), int(parts[1]), float(parts[2])
        except ValueError:
            continue
        if 0 <= h < 24 and 0 <= m < 60 and 0.0 <= s < 61.0:
            out[i] = h * 3600 + m * 60 + s
    return out


def stream_keys(columns: Mapping[str, np.ndarray]) -> tuple[list[Key | None], ...]:
    """Per row the keys of the four tables: source host, destination host, host pair, connection.

    A host is the IP address, or the ARP sender/target address for ARP rows. The pair is directed
    (``src -> dst``). A connection is the TCP socket (both directions share it) or the UDP stream.
    A missing key is ``None``.
    """
    src = [a or b for a, b in zip(_clean(columns["ip.src_host"]), _clean(columns["arp.src.proto_ipv4"]), strict=True)]
    dst = [a or b for a, b in zip(_clean(columns["ip.dst_host"]), _clean(columns["arp.dst.proto_ipv4"]), strict=True)]
    sport, dport = _clean(columns["tcp.srcport"]), _clean(columns["tcp.dstport"])
    uport, ustream = _clean(columns["udp.port"]), _clean(columns["udp.stream"])
    k_src: list[Key | None] = [s or None for s in src]
    k_dst: list[Key | None] = [d or None for d in dst]
    k_pair: list[Key | None] = [(s, d) if s or d else None for s, d in zip(src, dst, strict=True)]
    k_conn: list[Key | None] = []
    for s, d, a, b, u, st in zip(src, dst, sport, dport, uport, ustream, strict=True):
        if a or b:
            k_conn.append(("tcp", s, a, d, b) if (s, a) <= (d, b) else ("tcp", d, b, s, a))
        elif st or u:
            k_conn.append(("udp", st, u, *sorted((s, d))))
        else:
            k_conn.append(None)
    return k_src, k_dst, k_pair, k_conn
