"""Damped window statistics per packet, in the spirit of Kitsune's incremental statistics.

For every row and each of four key tables (source host, destination host, directed host
pair, connection) and each time decay ``lambda`` (weights halve every ``1/lambda`` s), the
stage updates that key's damped sums and emits, *after* counting the row: the damped packet
count, mean and spread of the TCP payload size, mean inter-arrival gap, the damped rates of
SYN-without-ACK, RST, FIN, MQTT CONNECT and CONNACK, and the rate of rows that open a new
connection. State carries across chunks, so any chunking of a stream gives
the same features; a key unseen for ``EXPIRE`` seconds starts again from zero.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

from iotad.features.names import DECAYS, EXPIRE, MIRROR_OF, N_WINDOW_FEATURES


@numba.njit(cache=True, nogil=True)
def _update(
    t: npt.NDArray[np.float64],  # (n,) stream time, non-decreasing
    size: npt.NDArray[np.float64],  # (n,)
    ind: npt.NDArray[np.float64],  # (n, K) 0/1 indicators
    slots: npt.NDArray[np.int64],  # (n, T) slot per table, -1 = no key
    mirror: npt.NDArray[np.int64],  # (n, T) slot of the key's mirror in table MIRROR_OF[k], -1 = none
    mirror_of: npt.NDArray[np.int64],  # (T,)
    lam: npt.NDArray[np.float64],  # (L,)
    expire: float,
    last: npt.NDArray[np.float64],  # (T, C) last time seen, -inf = empty slot
    sums: npt.NDArray[np.float64],  # (T, C, L, S) damped w, sum, sumsq, gap, K indicators, new
    out: npt.NDArray[np.float32],  # (n, T * L * F)
) -> None:
    n, n_tables = slots.shape
    n_decays = lam.shape[0]
    k_ind = ind.shape[1]
    n_stats = 4 + k_ind + 1
    conn = n_tables - 1
    mirror_base = n_tables * n_decays * n_stats
    for i in range(n):
        new_conn = 0.0
        for k in range(n_tables - 1, -1, -1):  # the connection first: its "new" feeds the host tables
            s = slots[i, k]
            base = k * n_decays * n_stats
            if s < 0:
                for f in range(n_decays * n_stats):
                    out[i, base + f] = 0.0
                continue
            dt = t[i] - last[k, s]
            fresh = dt > expire
            if fresh:
                dt = 0.0
                for dec in range(n_decays):
                    for j in range(n_stats):
                        sums[k, s, dec, j] = 0.0
            if k == conn:
                new_conn = 1.0 if fresh else 0.0
            last[k, s] = t[i]
            x = size[i]
            for dec in range(n_decays):
                d = 2.0 ** (-lam[dec] * dt)
                acc = sums[k, s, dec]
                w = acc[0] * d + 1.0
                ls = acc[1] * d + x
                ss = acc[2] * d + x * x
                gs = acc[3] * d + dt
                acc[0], acc[1], acc[2], acc[3] = w, ls, ss, gs
                mean = ls / w
                var = ss / w - mean * mean
                o = base + dec * n_stats
                out[i, o] = w
                out[i, o + 1] = mean
                out[i, o + 2] = math.sqrt(var) if var > 0.0 else 0.0
                out[i, o + 3] = gs / w
                for j in range(k_ind):
                    v = acc[4 + j] * d + ind[i, j]
                    acc[4 + j] = v
                    out[i, o + 4 + j] = v / w
                v = acc[4 + k_ind] * d + new_conn
                acc[4 + k_ind] = v
                out[i, o + 4 + k_ind] = v / w
        o = mirror_base
        for k in range(n_tables):
            m = mirror_of[k]
            if m < 0:
                continue
            r = mirror[i, k]
            gap = t[i] - last[m, r] if r >= 0 else np.inf
            for dec in range(n_decays):
                if gap <= expire:
                    acc = sums[m, r, dec]
                    out[i, o] = acc[0] * 2.0 ** (-lam[dec] * gap)
                    out[i, o + 1] = acc[1] / acc[0] if acc[0] > 0.0 else 0.0
                else:
                    out[i, o] = 0.0
                    out[i, o + 1] = 0.0
                o += 2


def update_windows(
    t: np.ndarray, size: np.ndarray, indicators: np.ndarray, slots: np.ndarray, mirror: np.ndarray,
    last: np.ndarray, sums: np.ndarray,
) -> npt.NDArray[np.float32]:
    """Advance the tables' state over ``len(t)`` rows in order; the rows' window features."""
    out = np.empty((len(t), N_WINDOW_FEATURES), dtype=np.float32)
    if len(t):
        _update(np.ascontiguousarray(t, dtype=np.float64), np.ascontiguousarray(size, dtype=np.float64),
                np.ascontiguousarray(indicators, dtype=np.float64), np.ascontiguousarray(slots, dtype=np.int64),
                np.ascontiguousarray(mirror, dtype=np.int64), np.asarray(MIRROR_OF, dtype=np.int64),
                np.asarray(DECAYS, dtype=np.float64), EXPIRE, last, sums, out)
    return out
