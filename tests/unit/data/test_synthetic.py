"""The synthetic generator: exact raw schema, seeds, non-IID mixes, spellings, hardness."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iotad.data import schema
from iotad.data.synthetic import generate_device_traffic, write_synthetic
from iotad.data.synthetic.packets import HEX_COLUMNS

ROWS = 4000
SEED = 11


@pytest.fixture(scope="module")
def frames() -> list[pd.DataFrame]:
    return [generate_device_traffic(k, ROWS, SEED) for k in range(3)]


def test_exact_raw_schema_all_strings(frames: list[pd.DataFrame]) -> None:
    for df in frames:
        assert tuple(df.columns) == schema.RAW_COLUMNS
        assert len(df) == ROWS
        values = df.to_numpy()
        assert all(isinstance(v, str) for v in values.ravel())


def test_same_inputs_same_output_and_seeds_differ() -> None:
    a = generate_device_traffic(1, 1500, 5)
    assert a.equals(generate_device_traffic(1, 1500, 5))
    assert not a.equals(generate_device_traffic(1, 1500, 6))
    assert not a.equals(generate_device_traffic(2, 1500, 5))


def test_empty_and_tiny() -> None:
    empty = generate_device_traffic(0, 0, 1)
    assert tuple(empty.columns) == schema.RAW_COLUMNS and len(empty) == 0
    assert len(generate_device_traffic(3, 17, 1)) == 17
    with pytest.raises(ValueError):
        generate_device_traffic(-1, 10, 1)


@pytest.mark.parametrize("seed", [0, 11, 12345])
def test_all_fourteen_families_across_three_devices(seed: int) -> None:
    seen = set().union(*(set(generate_device_traffic(k, 3000, seed)[schema.TYPE_COLUMN]) for k in (4, 5, 6)))
    assert seen == {schema.NORMAL, *schema.ATTACK_TYPES}


def test_labels_consistent_and_attack_share(frames: list[pd.DataFrame]) -> None:
    for df in frames:
        types, labels = df[schema.TYPE_COLUMN], df[schema.LABEL_COLUMN]
        assert set(types) <= set(schema.TRAFFIC_TYPES)
        assert set(labels) == {"0", "1"}
        assert ((labels == "1") == (types != schema.NORMAL)).all()
        assert 0.24 <= (labels == "1").mean() <= 0.36


def test_non_iid_mixes(frames: list[pd.DataFrame]) -> None:
    def attack_mix(df: pd.DataFrame) -> np.ndarray:
        counts = Counter(df[schema.TYPE_COLUMN])
        v = np.array([counts[t] for t in schema.ATTACK_TYPES], dtype=float)
        return v / v.sum()

    mixes = [attack_mix(df) for df in frames]
    for i in range(3):
        for j in range(i + 1, 3):
            assert 0.5 * np.abs(mixes[i] - mixes[j]).sum() > 0.3  # total variation distance
    topics = [set(df["mqtt.topic"]) - {"0", "0.0"} for df in frames]
    assert topics[0] != topics[1] != topics[2]
    assert all(t <= set(schema.CATEGORICAL_VOCAB["mqtt.topic"]) for t in topics)
    # Device 4 runs the sound sensor and the Modbus profile.
    d4 = generate_device_traffic(4, 2000, SEED)
    normal = d4[d4[schema.TYPE_COLUMN] == schema.NORMAL]
    assert "502" in set(normal["tcp.dstport"]) and (normal["mbtcp.len"] != "0").any()


def test_empty_spelling_quirk(frames: list[pd.DataFrame]) -> None:
    df = pd.concat(frames)
    attack = (df[schema.LABEL_COLUMN] == "1").to_numpy()
    cols = [c for c in schema.RAW_COLUMNS if c not in (schema.LABEL_COLUMN, schema.TYPE_COLUMN)]
    values = df[cols].to_numpy()
    assert (values[~attack] == "0").any() and not (values[~attack] == "0.0").any()
    assert (values[attack] == "0.0").any() and not (values[attack] == "0").any()
    for col in HEX_COLUMNS:
        a = df.loc[attack, col]
        assert "0x00000000" in set(a) and "0.0" not in set(a)


def test_field_spellings(frames: list[pd.DataFrame]) -> None:
    df = pd.concat(frames)
    assert df["frame.time"].str.fullmatch(r" 2021 \d\d:\d\d:\d\d\.\d{6}000 ").all()
    hosts = df["ip.src_host"][~df["ip.src_host"].isin(["0", "0.0"])]
    assert hosts.str.fullmatch(r"192\.168\.\d{1,3}\.\d{1,3}").all()
    for col in HEX_COLUMNS:
        v = df[col][~df[col].isin(["0", "0.0"])]
        assert v.str.fullmatch(r"0x[0-9a-f]{8}").all(), col
    normal = df[df[schema.TYPE_COLUMN] == schema.NORMAL]
    assert {"1", "2", "3", "14"} <= set(normal["mqtt.msgtype"])
    assert set(normal["mqtt.protoname"]) == {"0", "MQTT"}
    assert "1883" in set(normal["tcp.dstport"])
    publish = normal[normal["mqtt.msgtype"] == "3"]
    assert (publish["mqtt.topic_len"].astype(int) == publish["mqtt.topic"].str.len()).all()
    assert (publish["tcp.len"].astype(int) == publish["mqtt.len"].astype(int) + 2).all()
    assert publish["mqtt.msg"].str.fullmatch(r"[0-9a-f]+").all()
    for col in schema.CATEGORICAL_COLUMNS:
        vocab = set(schema.CATEGORICAL_VOCAB[col]) | {"0", "0.0", "0x00000000"}
        assert set(df[col]) <= vocab, col
    for col in schema.BINARY_COLUMNS:
        assert set(df[col]) <= {"0", "1", "0.0"}, col
    for col in ("tcp.seq", "tcp.ack", "tcp.ack_raw", "tcp.len", "udp.stream", "mbtcp.trans_id"):
        assert df[col].str.fullmatch(r"\d+(\.0)?").all(), col
    syn = normal[normal["tcp.flags"] == "0x00000002"]
    assert (syn["tcp.seq"] == "0").all() and (syn["tcp.connection.syn"] == "1").all()
    acked = normal[normal["tcp.flags.ack"] == "1"]
    assert acked["tcp.ack_raw"].astype(np.int64).max() > 2**31 // 2


def test_write_synthetic(tmp_path: Path) -> None:
    paths = write_synthetic(tmp_path, devices=2, rows_per_device=800, seed=3)
    assert paths == [tmp_path / f"device-{k}" / "traffic.csv" for k in range(2)]
    marker = json.loads((tmp_path / "dataset.json").read_text())
    assert marker["kind"] == "synthetic" and marker["generator"] == "iotad"
    assert (marker["seed"], marker["devices"], marker["rows_per_device"]) == (3, 2, 800)
    assert "not Edge-IIoTset" in (tmp_path / "SYNTHETIC.md").read_text()
    assert "not Edge-IIoTset" in (tmp_path / "device-0" / "README.md").read_text()
    back = pd.read_csv(paths[1], dtype=str, keep_default_na=False)
    assert back.equals(generate_device_traffic(1, 800, 3).astype(back.dtypes.to_dict()))


def test_loader_accepts_generated_rows(tmp_path: Path) -> None:
    loader = pytest.importorskip("iotad.data.loader")
    paths = write_synthetic(tmp_path, devices=3, rows_per_device=3000, seed=2)
    t = loader.load_traffic(paths)
    assert t.rows_read == 9000
    assert {r: n for r, n in t.rejected.items() if n and r != "duplicate"} == {}
    assert t.rejected["duplicate"] < 0.1 * t.rows_read
    assert set(t.attack_types) == set(schema.TRAFFIC_TYPES)


def _nn_distance(query: np.ndarray, ref: np.ndarray) -> np.ndarray:
    d2 = (query**2).sum(1)[:, None] + (ref**2).sum(1)[None, :] - 2.0 * query @ ref.T
    return np.sqrt(np.clip(d2.min(1), 0.0, None))


def test_hard_attacks_overlap_normal_easy_ones_do_not() -> None:
    encoding = pytest.importorskip("iotad.data.encoding")
    df = pd.concat([generate_device_traffic(k, 6000, 4) for k in range(5)], ignore_index=True)
    enc = encoding.encode_frame(df)
    x = enc.features.astype(np.float64)
    x = np.sign(x) * np.log1p(np.abs(x))
    types = df[schema.TYPE_COLUMN].to_numpy()
    normal = types == schema.NORMAL
    lo, hi = x[normal].min(0), x[normal].max(0)
    x = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
    rng = np.random.default_rng(0)
    idx = rng.permutation(np.flatnonzero(normal))
    ref, held = x[idx[:3000]], x[idx[3000:3300]]
    limit = np.quantile(_nn_distance(held, ref), 0.95)

    def near_share(t: str) -> float:
        rows = np.flatnonzero(types == t)
        q = x[rng.choice(rows, min(300, len(rows)), replace=False)]
        return float(np.mean(_nn_distance(q, ref) <= limit))

    for hard in ("Port_Scanning", "MITM", "Password", "Ransomware", "Fingerprinting"):
        assert near_share(hard) >= 0.5, hard
    for easy in ("DDoS_UDP", "Uploading", "DDoS_HTTP"):
        assert near_share(easy) <= 0.3, easy
