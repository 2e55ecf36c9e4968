"""Vectorised packet rows in the raw Edge-IIoTset schema.

A :class:`Rows` block holds ``n`` packets of one traffic type: capture times and,
per raw column, an object array of strings in which ``""`` marks an empty field.
The empty marker is spelled only when the device's frame is assembled, because
the real captures spell it differently in normal ("0") and attack ("0.0",
"0x00000000") rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from iotad.data.schema import RAW_COLUMNS

Values = np.ndarray | str | int

# Hex-spelled fields of the per-capture exports ("0x00000018").
HEX_COLUMNS: frozenset[str] = frozenset(
    {"tcp.flags", "tcp.checksum", "mqtt.conack.flags", "mqtt.conflags", "mqtt.hdrflags"}
)

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

# The TCP options a Linux client and an ESP/mosquitto server offer in the real captures.
SYN_OPTIONS = "020405b40103030801010402"
SYNACK_OPTIONS = "020405b40101040201030307"

_COLUMN_SET = frozenset(RAW_COLUMNS)
_U32 = 2**32


def ints(values: np.ndarray | Sequence[int]) -> np.ndarray:
    """Decimal spellings of an integer array (object array of str)."""
    return np.asarray(values, dtype=np.int64).astype(str).astype(object)


def hexs(values: np.ndarray | Sequence[int]) -> np.ndarray:
    """``0x%08x`` spellings, as the per-capture exports write flags and checksums."""
    return np.char.mod("0x%08x", np.asarray(values, dtype=np.int64)).astype(object)


def floats(values: np.ndarray, digits: int = 6) -> np.ndarray:
    """Fixed-point spellings of a float array."""
    return np.char.mod(f"%.{digits}f", np.asarray(values, dtype=np.float64)).astype(object)


def text_hex(texts: np.ndarray) -> np.ndarray:
    """Hex of the UTF-8 bytes of each string (encoded once per distinct string)."""
    if len(texts) == 0:
        return np.empty(0, dtype=object)
    uniq, inverse = np.unique(np.asarray(texts, dtype=str), return_inverse=True)
    encoded = np.array([u.encode().hex() for u in uniq], dtype=object)
    return encoded[inverse.reshape(-1)]


class PayloadPool:
    """Pseudo-random payload hex of a given byte length, sliced from one random buffer.

    Payload columns are identifiers (dropped before training); slicing one buffer
    keeps multi-kilobyte hex cells cheap while still looking like captured bytes.
    """

    def __init__(self, rng: np.random.Generator, size: int = 1500) -> None:
        self._hex = rng.integers(0, 256, size, dtype=np.uint8).tobytes().hex()
        self._size = size

    def take(self, lengths: np.ndarray) -> np.ndarray:
        lengths = np.clip(np.asarray(lengths, dtype=np.int64), 0, self._size)
        out = np.empty(len(lengths), dtype=object)
        for n in np.unique(lengths):
            out[lengths == n] = self._hex[: 2 * int(n)] if n > 0 else ""
        return out


def as_column(value: Values, n: int) -> np.ndarray:
    """Broadcast a scalar or convert an int/float/str array to an object array of str."""
    if isinstance(value, str):
        return np.full(n, value, dtype=object)
    if isinstance(value, int | np.integer):
        return np.full(n, str(int(value)), dtype=object)
    arr = np.asarray(value)
    if arr.shape != (n,):
        raise ValueError(f"column of length {arr.shape} for {n} rows")
    if arr.dtype.kind in "iub":
        return ints(arr.astype(np.int64))
    if arr.dtype.kind == "f":
        return floats(arr)
    return arr.astype(object)


class Rows:
    """``n`` packets of one traffic type: capture times and raw columns ("" = empty)."""

    def __init__(self, t: np.ndarray, kind: str) -> None:
        self.t = np.asarray(t, dtype=np.float64)
        self.kind = kind
        self.cols: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.t)

    def set(self, **columns: Values) -> Rows:
        """Set columns by keyword; dots in names are written as ``__`` (``tcp__len``)."""
        for key, value in columns.items():
            self.put(key.replace("__", "."), value)
        return self

    def put(self, column: str, value: Values) -> Rows:
        if column not in _COLUMN_SET:
            raise KeyError(f"not a raw column: {column}")
        self.cols[column] = as_column(value, len(self))
        return self

    def take(self, idx: np.ndarray) -> Rows:
        out = Rows(self.t[idx], self.kind)
        out.cols = {c: v[idx] for c, v in self.cols.items()}
        return out

    def first(self, n: int) -> Rows:
        """The ``n`` earliest packets, in time order."""
        order = np.argsort(self.t, kind="stable")[:n]
        return self.take(order)

    @staticmethod
    def concat(parts: Sequence[Rows], kind: str) -> Rows:
        parts = [p for p in parts if len(p)]
        out = Rows(np.concatenate([p.t for p in parts]) if parts else np.empty(0), kind)
        for col in {c for p in parts for c in p.cols}:
            out.cols[col] = np.concatenate(
                [p.cols.get(col, np.full(len(p), "", dtype=object)) for p in parts]
            )
        return out


@dataclass
class Step:
    """One packet of a TCP conversation, sent in every session where ``mask`` is true."""

    client: bool
    flags: int
    length: np.ndarray | int = 0
    payload: Values = ""
    fields: Mapping[str, Values] = field(default_factory=dict)
    gap: float = 0.0005
    mask: np.ndarray | None = None
    options: str = ""


def _pick(value: Values, idx: np.ndarray) -> Values:
    return value[idx] if isinstance(value, np.ndarray) else value


def conversation(
    rng: np.random.Generator,
    start: np.ndarray,
    steps: Sequence[Step],
    *,
    client_ip: Values,
    server_ip: Values,
    client_port: Values,
    server_port: Values,
    kind: str,
    client_seq0: np.ndarray | int = 0,
    server_seq0: np.ndarray | int = 0,
) -> Rows:
    """Packets of ``len(start)`` TCP sessions following ``steps``, vectorised over sessions.

    Relative sequence/ack numbers follow Wireshark: SYN and FIN consume one, an ACK
    acknowledges the peer's next sequence number; ``tcp.ack_raw`` is the peer's random
    initial sequence number plus the relative ack.
    """
    s = len(start)
    isn = {True: rng.integers(0, _U32, s), False: rng.integers(0, _U32, s)}
    nxt = {
        True: np.broadcast_to(np.asarray(client_seq0, dtype=np.int64), (s,)).copy(),
        False: np.broadcast_to(np.asarray(server_seq0, dtype=np.int64), (s,)).copy(),
    }
    t = np.asarray(start, dtype=np.float64).copy()
    blocks: list[Rows] = []
    for st in steps:
        mask = np.ones(s, dtype=bool) if st.mask is None else st.mask
        length = np.broadcast_to(np.asarray(st.length, dtype=np.int64), (s,))
        t = t + rng.exponential(st.gap, s) * mask
        sender, peer = st.client, not st.client
        seq = nxt[sender].copy()
        has_ack = bool(st.flags & ACK)
        ack = nxt[peer] if has_ack else np.zeros(s, dtype=np.int64)
        ack_raw = (isn[peer] + ack) % _U32 if has_ack else np.zeros(s, dtype=np.int64)
        nxt[sender] = nxt[sender] + (length + (1 if st.flags & (SYN | FIN) else 0)) * mask
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            continue
        n = idx.size
        rows = Rows(t[idx], kind)
        src_ip, dst_ip = (client_ip, server_ip) if sender else (server_ip, client_ip)
        src_port, dst_port = (client_port, server_port) if sender else (server_port, client_port)
        rows.set(
            ip__src_host=_pick(src_ip, idx),
            ip__dst_host=_pick(dst_ip, idx),
            tcp__srcport=_pick(src_port, idx),
            tcp__dstport=_pick(dst_port, idx),
            tcp__flags=hexs(np.full(n, st.flags)),
            tcp__flags__ack=int(has_ack),
            tcp__connection__syn=int(bool(st.flags & SYN) and not has_ack),
            tcp__connection__synack=int(bool(st.flags & SYN) and has_ack),
            tcp__connection__fin=int(bool(st.flags & FIN)),
            tcp__connection__rst=int(bool(st.flags & RST)),
            tcp__seq=seq[idx],
            tcp__ack=ack[idx],
            tcp__ack_raw=ack_raw[idx],
            tcp__checksum=hexs(rng.integers(0, 65536, n)),
            tcp__len=length[idx],
            tcp__payload=_pick(st.payload, idx),
            tcp__options=st.options,
        )
        for col, value in st.fields.items():
            rows.put(col, _pick(value, idx))
        blocks.append(rows)
    return Rows.concat(blocks, kind)


def handshake(options: bool = True) -> list[Step]:
    """SYN, SYN-ACK, ACK."""
    return [
        Step(True, SYN, options=SYN_OPTIONS if options else ""),
        Step(False, SYN | ACK, options=SYNACK_OPTIONS if options else "", gap=0.0003),
        Step(True, ACK, gap=0.0003),
    ]
