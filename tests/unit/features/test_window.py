"""Window statistics: chunking invariance, spelling invariance, bounded memory, clock repair, streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iotad.data.loader import iter_traffic, load_traffic
from iotad.data.schema import FEATURE_NAMES, N_FEATURES
from iotad.data.synthetic import write_synthetic
from iotad.features.keys import parse_clock, stream_keys
from iotad.features.names import N_WINDOW_FEATURES, WINDOW_FEATURE_NAMES
from iotad.features.sets import PACKET, WINDOW, WindowStage, feature_names, feature_set_of
from iotad.features.stream import WindowState
from tests.conftest import REAL_MITM, REAL_NORMAL, respell

_COL = {n: i for i, n in enumerate(FEATURE_NAMES)}


@pytest.fixture(scope="module")
def traffic_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("win")
    write_synthetic(out, devices=1, rows_per_device=3000, seed=5)
    return out / "device-0" / "traffic.csv"


def _columns(n: int, src: list[str], dst: list[str], t0: float = 100.0, dt: float = 0.01) -> dict[str, np.ndarray]:
    times = [f" 2021 {int((t0 + i * dt) // 3600):02d}:{int((t0 + i * dt) % 3600 // 60):02d}:"
             f"{(t0 + i * dt) % 60:09.6f}000 " for i in range(n)]
    cols = {"frame.time": np.array(times, dtype=object),
            "ip.src_host": np.array(src, dtype=object), "ip.dst_host": np.array(dst, dtype=object)}
    for c in ("arp.src.proto_ipv4", "arp.dst.proto_ipv4", "udp.port", "udp.stream"):
        cols[c] = np.array(["0"] * n, dtype=object)
    cols["tcp.srcport"] = np.array([str(40000 + i % 50) for i in range(n)], dtype=object)
    cols["tcp.dstport"] = np.array(["1883"] * n, dtype=object)
    return cols


def _packet(n: int) -> dict[str, np.ndarray]:
    return {"tcp.flags": np.full(n, 0x18, dtype=np.float32), "tcp.len": np.full(n, 60, dtype=np.float32),
            "mqtt.msgtype": np.full(n, 3, dtype=np.float32)}


def test_names_and_sets() -> None:
    assert len(WINDOW_FEATURE_NAMES) == N_WINDOW_FEATURES == len(set(WINDOW_FEATURE_NAMES))
    assert feature_names(PACKET) == FEATURE_NAMES
    assert feature_names(WINDOW) == FEATURE_NAMES + WINDOW_FEATURE_NAMES
    assert feature_set_of(feature_names(WINDOW)) == WINDOW
    with pytest.raises(ValueError, match="no feature set"):
        feature_set_of(["x"])
    # Identifiers are keys and deltas only: no window column is named after an address, port or time.
    assert not any(k in n for n in WINDOW_FEATURE_NAMES for k in ("ip.", "port", "frame.time", "stream"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_chunking_gives_the_features_of_one_pass(traffic_csv: Path, seed: int) -> None:
    one = load_traffic(traffic_csv, dedupe=False, extra=WindowStage())
    rng = np.random.default_rng(seed)
    # iter_traffic cuts at chunk_rows lines: random sizes by reading with a varying chunk size per pass.
    size = int(rng.integers(1, 700))
    parts = list(iter_traffic(traffic_csv, chunk_rows=size, extra=WindowStage()))
    chunked = np.concatenate([p.features for p in parts])
    assert len(parts) > 1
    np.testing.assert_array_equal(chunked, one.features)
    # And fed block by block into one long-lived stage (the agent's way), with ragged blocks.
    stage = WindowStage()
    stage.start_stream()
    cut = np.sort(rng.choice(np.arange(1, len(one)), size=9, replace=False))
    pieces = []
    for lo, hi in zip(np.r_[0, cut], np.r_[cut, len(one)], strict=True):
        rows = slice(int(lo), int(hi))
        keys = {c: v[rows] for c, v in _keys_of(traffic_csv).items()}
        pieces.append(stage(keys, one.features[rows, :N_FEATURES]))
    np.testing.assert_array_equal(np.concatenate(pieces), one.features[:, N_FEATURES:])


def _keys_of(csv: Path) -> dict[str, np.ndarray]:
    import pandas as pd

    from iotad.data.schema import STREAM_COLUMNS
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    return {c: frame[c].to_numpy(dtype=object) for c in STREAM_COLUMNS}


def test_window_features_do_not_depend_on_empty_spelling(traffic_csv: Path, tmp_path: Path) -> None:
    respelled = tmp_path / "respelled.csv"
    respelled.write_text(respell(traffic_csv.read_text()))
    a = load_traffic(traffic_csv, extra=WindowStage())
    b = load_traffic(respelled, extra=WindowStage())
    np.testing.assert_array_equal(a.features, b.features)


def test_real_rows_window_features_do_not_depend_on_empty_spelling(real: Path, tmp_path: Path) -> None:
    for name in (REAL_NORMAL, REAL_MITM):
        respelled = tmp_path / name
        respelled.write_text(respell((real / name).read_text()))
        a = load_traffic(real / name, dedupe=False, extra=WindowStage())
        b = load_traffic(respelled, dedupe=False, extra=WindowStage())
        np.testing.assert_array_equal(a.features, b.features)
        assert np.isfinite(a.features).all()


def test_empty_spellings_of_a_host_are_one_missing_key() -> None:
    cols = _columns(4, ["0", "0.0", "0x00000000", ""], ["a", "a", "a", "a"])
    src, dst, pair, _ = stream_keys(cols)
    assert src == [None] * 4 and dst == ["a"] * 4
    assert len(set(pair)) == 1


def test_spoofed_source_flood_stays_within_capacity() -> None:
    n, capacity = 20_000, 512
    state = WindowState(capacity=capacity)
    for lo in range(0, n, 4000):  # every row from a new source: a spoofed flood
        rows = range(lo, lo + 4000)
        cols = _columns(4000, [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in rows], ["victim"] * 4000,
                        t0=100 + lo * 0.001, dt=0.001)
        out = state.update(cols, _packet(4000))
        assert np.isfinite(out).all()
    assert all(v <= capacity for v in state.tracked().values())
    assert state.counters.evicted["src"] >= n - capacity
    assert state.nbytes == state.last.nbytes + state.sums.nbytes  # fixed-size arrays: no growth
    before = state.nbytes
    state.update(_columns(10, ["x"] * 10, ["y"] * 10, t0=200), _packet(10))
    assert state.nbytes == before


def test_clock_goes_forward_only_and_rolls_over_midnight() -> None:
    state = WindowState()
    cols = _columns(3, ["a"] * 3, ["b"] * 3)
    cols["frame.time"] = np.array([" 2021 23:59:59.500000000 ", " 2021 23:59:59.000000000 ",
                                   " 2021 00:00:00.250000000 "], dtype=object)
    state.update(cols, _packet(3))
    assert state.counters.clamped == 1  # the step back is held
    assert state.clock == pytest.approx(86_400.25)  # past midnight, not 24 h back
    cols["frame.time"] = np.array(["6.0", "", "garbage"], dtype=object)  # shifted rows: no clock
    out = state.update(cols, _packet(3))
    assert state.counters.bad_time == 3 and np.isfinite(out).all()


def test_parse_clock() -> None:
    got = parse_clock([" 2021 23:58:21.314757000 ", "12:00:01.5", "0.0", "25:00:00", None])
    assert got[0] == pytest.approx(86301.314757) and got[1] == pytest.approx(43201.5)
    assert np.isnan(got[2:]).all()


def test_each_file_is_its_own_stream(traffic_csv: Path, tmp_path: Path) -> None:
    alone = load_traffic(traffic_csv, dedupe=False, extra=WindowStage())
    both = load_traffic([traffic_csv, traffic_csv], dedupe=False, extra=WindowStage())
    np.testing.assert_array_equal(both.features[: len(alone)], alone.features)
    np.testing.assert_array_equal(both.features[len(alone):], alone.features)


def test_rates_see_the_session_shape() -> None:
    """A burst of SYNs from one source to many ports shows as SYN and new-connection rates."""
    n = 200
    state = WindowState()
    cols = _columns(n, ["scanner"] * n, ["victim"] * n, dt=0.001)
    cols["tcp.dstport"] = np.array([str(p) for p in range(1, n + 1)], dtype=object)
    packet = _packet(n)
    packet["tcp.flags"][:] = 0x02
    out = state.update(cols, packet)
    syn = WINDOW_FEATURE_NAMES.index("win.src.l1.syn")
    new = WINDOW_FEATURE_NAMES.index("win.src.l1.new")
    assert out[-1, syn] == pytest.approx(1.0) and out[-1, new] == pytest.approx(1.0)
    count = WINDOW_FEATURE_NAMES.index("win.src.l5.count")
    assert out[-1, count] > 50  # 200 packets in 0.2 s, half-life 0.2 s


def test_an_empty_block_has_the_window_width() -> None:
    cols = _columns(0, [], [])
    assert WindowState().update(cols, _packet(0)).shape == (0, N_WINDOW_FEATURES)
