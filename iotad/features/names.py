"""The window features' layout: tables, decays and statistics, and the column names they make.

Kept apart from the numba kernel (:mod:`iotad.features.window`) so that a process that only needs the
names (the aggregator, a bundle check) does not load the compiler.
"""

from __future__ import annotations

TABLES: tuple[str, ...] = ("src", "dst", "pair", "conn")
DECAYS: tuple[float, ...] = (5.0, 1.0, 0.1, 0.01)  # 1/s
INDICATORS: tuple[str, ...] = ("syn", "rst", "fin", "mqtt_connect", "mqtt_connack")
STATS: tuple[str, ...] = ("count", "size_mean", "size_std", "gap_mean", *INDICATORS, "new")
#: The same key seen from the other side, read (not counted) at the row's time: a source host's
#: traffic as a destination, the destination's as a source, the reverse pair. Connections are
#: two-way already.
MIRROR_STATS: tuple[str, ...] = ("back_count", "back_size_mean")
MIRROR_OF: tuple[int, ...] = (1, 0, 2, -1)  # table whose state mirrors each table
#: A key this long unseen keeps < 2**-20 of its weight at the slowest decay: it is new again.
EXPIRE = 20.0 / min(DECAYS)

WINDOW_FEATURE_NAMES: tuple[str, ...] = tuple(
    f"win.{table}.l{decay:g}.{stat}" for table in TABLES for decay in DECAYS for stat in STATS
) + tuple(
    f"win.{table}.l{decay:g}.{stat}"
    for table, mirror in zip(TABLES, MIRROR_OF, strict=True) if mirror >= 0
    for decay in DECAYS for stat in MIRROR_STATS
)
N_WINDOW_FEATURES = len(WINDOW_FEATURE_NAMES)
