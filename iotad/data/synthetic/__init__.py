"""Schema-faithful synthetic IoT/IIoT traffic (synthetic data, not Edge-IIoTset).

Rows use the raw 63-column Edge-IIoTset layout (``schema.RAW_COLUMNS``), every value a
string spelled as the per-capture CSV exports spell it: hex flags and checksums
(``0x00000018``), padded ``frame.time`` (`` 2021 23:58:21.314757000 ``), relative
``tcp.seq``/``tcp.ack`` with a random 32-bit ``tcp.ack_raw``, payload hex, and the
release's spelling quirk: an empty field is ``0`` in normal rows but ``0.0`` (``0x00000000``
in hex fields) in attack rows. The loader normalises that; a detector must not depend on it.

Normal traffic: each device runs two of ten sensor profiles round-robin (MQTT temperature
& humidity, distance, water level, pH, soil moisture, heart rate, flame, IR, sound: full
TCP sessions to a broker on 1883 with CONNECT/CONNACK/PUBLISH[/PUBACK]/PINGREQ/DISCONNECT;
or Modbus TCP polling on 502) plus shared gateway background (TLS uploads with telemetry
and bulk streams, an HTTP dashboard, DNS/mDNS, NTP, ARP, pings, refused connections).
Profiles differ in QoS, authentication, client ids, publish counts and message formats,
so normal traffic varies and not every deviation is new.

Attacks (all 14 ``schema.ATTACK_TYPES``), judged on the columns a detector sees
(identifiers dropped):

Easy: ``DDoS_UDP`` (a new UDP stream per spoofed packet: ``udp.stream`` in the thousands,
zero time delta), ``DDoS_TCP`` (SYNs carrying data, some with PSH/URG; the 30 % bare SYNs are
indistinguishable from a normal SYN), ``DDoS_HTTP`` (short HEAD/GET requests pipelined deep
into a connection, large ``tcp.seq``), ``SQL_injection`` / ``XSS`` (560-1450-byte requests with
the DVWA referer; their 1448-byte responses resemble dashboard responses), ``Uploading``
(multi-megabyte ``http.content_length`` and ``tcp.seq``), ``Vulnerability_scanner``
(OPTIONS/PROPFIND/TRACE/PUT, HTTP/1.0, pipelined on keep-alive connections; its plain GETs look
normal). SQL_injection/XSS send several payloads per keep-alive connection; normal authenticating
sensors always use their configured credentials (fixed CONNECT lengths); MITM's forged DNS answers
race the real ones (duplicate answers flagged as retransmissions).

Medium: ``DDoS_ICMP`` is per packet just an echo request (only ``icmp.seq_le`` spread over the
whole 16-bit range and rare timestamps differ from the gateway's pings).

Hard (deliberately close to normal): ``Port_Scanning`` (a slow half-open scan: its SYN and
SYN-ACK rows equal a normal handshake's, its RST-ACK rows equal the refused connections of
normal traffic), ``MITM`` (ARP replies and DNS answers with the same fields as normal ARP and
DNS), ``Password`` (MQTT CONNECTs with username/password, like the authenticating sensor
profiles, refused by the broker: only the session shape differs), ``Backdoor`` (a reverse
shell of small PSH/ACK segments, like telemetry streams), ``Ransomware`` (bulk encrypted
segments, like the gateway's bulk uploads), ``Fingerprinting`` (nmap -O probes: most are
ordinary SYN/SYN-ACK/RST/ACK/ICMP packets, a few odd flag sets such as SYN+ECE+CWR).

Non-IID: device ``k`` has its own profiles, background mix and attack mix (Dirichlet over
the families, with families ``i % 3 == k % 3`` always present, so any three consecutive
devices cover all 14); attacks are 25-35 % of a device's rows. Everything is seeded:
``(device, rows, seed)`` gives identical output.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from iotad.data.schema import ATTACK_TYPES, LABEL_COLUMN, NORMAL, RAW_COLUMNS, TYPE_COLUMN
from iotad.data.synthetic import attacks, background, profiles
from iotad.data.synthetic.packets import HEX_COLUMNS, PayloadPool, Rows

__all__ = ["MARKER", "generate_device_traffic", "write_synthetic"]

MARKER = "dataset.json"
ROW_SECONDS = 0.02  # mean capture time per row: sets the window the sessions spread over
ATTACK_SHARE = (0.25, 0.35)
_YEAR = 2021


def _fill(
    n: int, make: Callable[[np.ndarray], Rows], rows_per_unit: float, times: Callable[[int], np.ndarray]
) -> Rows | None:
    """Generate units (sessions or packets) until ``n`` rows exist, then keep the ``n`` earliest."""
    if n <= 0:
        return None
    units = int(np.ceil(n / max(rows_per_unit, 1e-9) * 1.25)) + 2
    while True:
        rows = make(times(units))
        if len(rows) >= n:
            return rows.first(n)
        units *= 2


def _mqtt_rows_per_session(p: profiles.SensorProfile) -> float:
    pubs = (p.publishes[0] + p.publishes[1]) / 2
    return 8.5 + pubs * (2.0 if p.qos else 1.8) + 2 * p.ping


def _attack_counts(rng: np.random.Generator, device: int, n_attack: int) -> np.ndarray:
    k = len(ATTACK_TYPES)
    focus = np.arange(k) % 3 == device % 3
    # Focus families share 60 % of the attack rows, the others (sparser Dirichlet) 40 %.
    weights = np.zeros(k)
    weights[focus] = 0.6 * rng.dirichlet(np.full(int(focus.sum()), 2.0))
    weights[~focus] = 0.4 * rng.dirichlet(np.full(int((~focus).sum()), 0.5))
    counts = rng.multinomial(n_attack, weights)
    # Every focus family keeps at least one row (when there are enough attack rows).
    for i in np.flatnonzero(focus & (counts == 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts


def _call_family(
    fam: attacks.Family, rng: np.random.Generator, net: profiles.Network, pool: PayloadPool, start: np.ndarray
) -> Rows:
    return fam.make(rng, start, net, pool)


def _device_parts(device: int, rows: int, seed: int) -> list[Rows]:
    rng = np.random.default_rng([seed, device, 0x10_7AD])
    net = profiles.make_network(rng, device)
    pool = PayloadPool(rng)
    span = max(rows, 1) * ROW_SECONDS

    def spread(units: int) -> np.ndarray:
        return np.sort(rng.uniform(0.0, span, units))

    n_attack = round(rows * float(rng.uniform(*ATTACK_SHARE)))
    n_normal = rows - n_attack
    parts: list[Rows | None] = []

    # Normal: two sensor profiles + background, shares differing per device.
    prof_a, prof_b = profiles.device_profiles(device)
    share = rng.dirichlet([5.0, 3.0, 3.5])
    n_a, n_b, n_bg = rng.multinomial(n_normal, share)
    for prof, n in ((prof_a, n_a), (prof_b, n_b)):
        per = 24.75 if prof.topic is None else _mqtt_rows_per_session(prof)
        parts.append(_fill(int(n), partial(profiles.profile_sessions, rng, prof, net=net), per, spread))
    bg = rng.multinomial(n_bg, rng.dirichlet(background.BACKGROUND_SHARE * 40))
    stream0 = int(rng.integers(0, 40))
    bg_makers = {
        "tls": (lambda st: background.tls_streams(rng, st, net, pool), 17.6),
        "http": (lambda st: background.http_dashboard(rng, st, net, pool), 9.6),
        "dns": (lambda st: background.dns_rows(rng, st, net, stream0), 1.0),
        "ntp": (lambda st: background.ntp_rows(rng, st, net, stream0 + 5000), 1.0),
        "arp": (lambda st: background.arp_rows(rng, st, net), 1.0),
        "icmp": (lambda st: background.icmp_echo_rows(rng, st, net), 1.0),
        "refused": (lambda st: background.refused_rows(rng, st, net), 2.0),
    }
    for name, n in zip(background.BACKGROUND, bg, strict=True):
        make, per = bg_makers[name]
        parts.append(_fill(int(n), make, per, spread))

    # Attacks: each family is an episode starting somewhere in the capture.
    for family, n in zip(ATTACK_TYPES, _attack_counts(rng, device, n_attack), strict=True):
        fam = attacks.FAMILIES[family]
        t0 = rng.uniform(0.0, 0.7 * span)

        def episode(units: int, t0: float = t0, gap: float = fam.unit_gap) -> np.ndarray:
            return t0 + np.cumsum(rng.exponential(gap, units))

        make_attack = partial(_call_family, fam, rng, net, pool)
        parts.append(_fill(int(n), make_attack, fam.rows_per_unit, episode))
    return [p for p in parts if p is not None and len(p)]


def _frame_times(seconds: np.ndarray) -> list[str]:
    """`` 2021 HH:MM:SS.ffffff000 `` as in the release (date truncated, padded with spaces)."""
    micro = np.rint(seconds * 1e6).astype(np.int64) % (86_400 * 1_000_000)
    sec, us = np.divmod(micro, 1_000_000)
    h, rem = np.divmod(sec, 3600)
    m, s = np.divmod(rem, 60)
    return [f" {_YEAR} {a:02d}:{b:02d}:{c:02d}.{d:06d}000 " for a, b, c, d in zip(h, m, s, us, strict=True)]


def _assemble(parts: list[Rows], clock: float) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in RAW_COLUMNS})
    t = np.concatenate([p.t for p in parts])
    order = np.argsort(t, kind="stable")
    kind = np.concatenate([np.full(len(p), p.kind, dtype=object) for p in parts])[order]
    attack = kind != NORMAL
    data: dict[str, np.ndarray | list[str]] = {"frame.time": _frame_times(clock + t[order])}
    for col in RAW_COLUMNS:
        if col in (LABEL_COLUMN, TYPE_COLUMN, "frame.time"):
            continue
        values = np.concatenate([p.cols.get(col, np.full(len(p), "", dtype=object)) for p in parts])[order]
        empty = values == ""
        attack_empty = "0x00000000" if col in HEX_COLUMNS else "0.0"
        # The release's quirk: empties and zeros are "0" in normal captures, "0.0" in attack ones.
        values = np.where(empty & ~attack, "0", values)
        values = np.where(attack & (empty | (values == "0")), attack_empty, values)
        data[col] = values.astype(object)
    data[LABEL_COLUMN] = np.where(attack, "1", "0").astype(object)
    data[TYPE_COLUMN] = kind
    return pd.DataFrame(data, columns=list(RAW_COLUMNS))


def generate_device_traffic(device: int, rows: int, seed: int) -> pd.DataFrame:
    """Raw-schema traffic one edge gateway (``device``) captures: normal + labelled attacks.

    Parameters
    ----------
    device : int
        Device index (0-based); selects sensor profiles and the attack mix.
    rows : int
        Number of rows (packets).
    seed : int
        Seed; the same ``(device, rows, seed)`` always gives the same frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``schema.RAW_COLUMNS`` in order, every value a ``str``, time-ordered.
    """
    if device < 0 or rows < 0:
        raise ValueError("device and rows must be non-negative")
    parts = _device_parts(device, rows, seed)
    clock_rng = np.random.default_rng([seed, device, 0xC10C])
    window = rows * ROW_SECONDS * 1.5  # start of day so the capture rarely wraps midnight
    clock = float(clock_rng.uniform(0, 86_400 - window)) if window < 80_000 else 0.0
    return _assemble(parts, clock)


_README = """# Synthetic traffic (synthetic data, not Edge-IIoTset)

Generated by iotad's schema-faithful generator (`iotad.data.synthetic`), seed {seed},
{devices} devices x {rows} rows. The rows use the raw Edge-IIoTset column layout and
spellings but are NOT Edge-IIoTset data: never report results on them as results on
Edge-IIoTset.
"""


def write_synthetic(out: Path, devices: int, rows_per_device: int, seed: int) -> list[Path]:
    """Write ``out/device-<k>/traffic.csv`` for ``k < devices`` plus ``SYNTHETIC.md`` and ``dataset.json``.

    Returns
    -------
    list of Path
        The per-device CSV paths, in device order.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    counts: list[dict[str, int]] = []
    for k in range(devices):
        frame = generate_device_traffic(k, rows_per_device, seed)
        path = out / f"device-{k}" / "traffic.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        readme = _README.format(seed=seed, devices=devices, rows=rows_per_device)
        (path.parent / "README.md").write_text(readme)
        counts.append({str(k_): int(v) for k_, v in frame[TYPE_COLUMN].value_counts().sort_index().items()})
        paths.append(path)
    (out / "SYNTHETIC.md").write_text(_README.format(seed=seed, devices=devices, rows=rows_per_device))
    marker = {
        "kind": "synthetic", "generator": "iotad", "note": "synthetic data, not Edge-IIoTset",
        "seed": seed, "devices": devices, "rows_per_device": rows_per_device,
        "traffic_types_per_device": counts,
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return paths
