"""Spelling normalisation, hex parsing, one-hot layout and reject reasons of the encoder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from iotad.data.encoding import (
    BAD_LABEL,
    KEPT,
    LABEL_FROM_TYPE,
    LABEL_TYPE_MISMATCH,
    NON_FINITE,
    NON_NUMERIC,
    SHIFTED,
    UNKNOWN_TYPE,
    SchemaError,
    canonical_token,
    category_codes,
    encode_frame,
    parse_number,
    parse_numeric_column,
    row_hashes,
    type_name,
)
from iotad.data.schema import (
    CATEGORICAL_COLUMNS,
    CATEGORICAL_VOCAB,
    EMPTY_SPELLINGS,
    FEATURE_NAMES,
    LABEL_COLUMN,
    N_FEATURES,
    NUMERIC_COLUMNS,
    RAW_COLUMNS,
    TYPE_COLUMN,
    UNNAMED_ATTACK,
)


def frame(rows: list[dict[str, str]], *, empty: str = "0", labelled: bool = True) -> pd.DataFrame:
    """Raw string frame in the release schema; unspecified fields hold ``empty``."""
    columns = [c for c in RAW_COLUMNS if labelled or c not in (LABEL_COLUMN, TYPE_COLUMN)]
    base = {c: empty for c in columns}
    if labelled:
        base.update({LABEL_COLUMN: "0", TYPE_COLUMN: "Normal"})
    return pd.DataFrame([{**base, **r} for r in rows], columns=columns, dtype=str)


def col(name: str) -> int:
    return FEATURE_NAMES.index(name)


def test_feature_layout() -> None:
    assert N_FEATURES == len(FEATURE_NAMES) == 71
    assert FEATURE_NAMES[: len(NUMERIC_COLUMNS)] == NUMERIC_COLUMNS
    assert len(set(FEATURE_NAMES)) == N_FEATURES
    for c in CATEGORICAL_COLUMNS:
        block = [n for n in FEATURE_NAMES if n.startswith(c + "=")]
        assert block == [f"{c}={v}" for v in CATEGORICAL_VOCAB[c]] + [f"{c}=<other>"]


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("0x00000018", 24.0),
        (" 0x0000a1b2 ", 41394.0),
        ("0X1f", 31.0),
        ("12", 12.0),
        ("1.5e3", 1500.0),
        (" 7 ", 7.0),
        ("-0", 0.0),
        ("inf", float("inf")),
        ("1e400", float("inf")),
    ]
    + [(s, 0.0) for s in sorted(EMPTY_SPELLINGS)],
)
def test_parse_number(raw: str, value: float) -> None:
    assert parse_number(raw) == value


@pytest.mark.parametrize("raw", ["abc", "1_000", "0x", "0xZZ", "1.2.3", "192.168.0.1", "_ipp._tcp.local"])
def test_parse_number_rejects_garbage(raw: str) -> None:
    assert parse_number(raw) is None


def test_canonical_token() -> None:
    assert {canonical_token(s) for s in ("1", "1.0", " 1 ", "0x00000001", "1e0", "+1")} == {"1"}
    assert {canonical_token(s) for s in (*EMPTY_SPELLINGS, "0.00", "0x0", " 0 ")} == {""}
    assert canonical_token("0x0000511a") == "20762"
    assert canonical_token("2.5") == "2.5"
    assert canonical_token(" GET ") == "GET"
    assert canonical_token("127.0.0.1") == "127.0.0.1"


def test_parse_numeric_column_status_and_signed_zero() -> None:
    raw = np.array(["0x10", "abc", "inf", "1e39", "-0", "0.0", "", "3.5", "abc"], dtype=object)
    values, status = parse_numeric_column(raw)
    assert values.tolist() == [16.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.5, 0.0]
    assert status.tolist() == [KEPT, NON_NUMERIC, NON_FINITE, NON_FINITE, KEPT, KEPT, KEPT, KEPT, NON_NUMERIC]
    assert not np.signbit(values).any()  # "-0" would otherwise differ from "0" in bytes


def test_category_codes_vocab_other_and_empty() -> None:
    raw = np.array(["1.0", "1", "0x00000001", "raspberrypi.local", "foo.local", "0.0", "", "0"], dtype=object)
    assert category_codes(raw, "dns.qry.name.len").tolist() == [0, 0, 0, 3, 4, -1, -1, -1]


@pytest.mark.parametrize("spelling", [*sorted(EMPTY_SPELLINGS), " 0 ", "0.00", "0x0", None, np.nan])
def test_every_empty_spelling_encodes_identically(spelling: object) -> None:
    """The label-shortcut guard: how "no value" is spelled must not change a single byte."""
    reference = encode_frame(frame([{"tcp.len": "5", "mqtt.topic": "Distance"}], empty="0"))
    data = frame([{"tcp.len": "5", "mqtt.topic": "Distance"}], empty="0")
    for c in data.columns:
        if c not in (LABEL_COLUMN, TYPE_COLUMN, "tcp.len", "mqtt.topic"):
            data[c] = pd.Series([spelling], dtype=object)
    encoded = encode_frame(data)
    assert encoded.reason.tolist() == [KEPT]
    assert encoded.features.tobytes() == reference.features.tobytes()


def test_one_hot_and_hex() -> None:
    enc = encode_frame(
        frame(
            [
                {"tcp.flags": "0x00000018", "http.request.method": "GET", "mqtt.topic": "Greenhouse"},
                {"tcp.flags": "24", "http.request.method": "0.0", "mqtt.conack.flags": "0x00000001"},
            ]
        )
    )
    f = enc.features
    assert f[:, col("tcp.flags")].tolist() == [24.0, 24.0]
    assert f[0, col("http.request.method=GET")] == 1.0
    assert f[0, col("mqtt.topic=<other>")] == 1.0
    assert f[1, col("mqtt.conack.flags=<other>")] == 1.0  # empty vocabulary: any value is "other"
    onehot = f[:, len(NUMERIC_COLUMNS) :]
    assert onehot.sum(axis=1).tolist() == [2.0, 1.0]  # empty categories encode as all zeros
    assert f.dtype == np.float32 and f.shape == (2, N_FEATURES)


def test_reject_reasons_and_priority() -> None:
    enc = encode_frame(
        frame(
            [
                {},
                {"tcp.len": "abc", "tcp.ack": "inf"},  # garbage wins over non-finite
                {"tcp.ack": "-inf"},
                {"tcp.connection.syn": "1440.0"},
                {"dns.qry.qu": "0x00000010", LABEL_COLUMN: "7"},  # shifted wins over bad label
                {LABEL_COLUMN: "1"},  # attack label on a Normal type
                {LABEL_COLUMN: "1", TYPE_COLUMN: "Teleport"},
                {LABEL_COLUMN: "", TYPE_COLUMN: "Normal"},
                {LABEL_COLUMN: "1.0", TYPE_COLUMN: " MITM "},
                {"tcp.connection.fin": "1.0", "mqtt.conflag.cleansess": "0x00000001"},
                {LABEL_COLUMN: "", TYPE_COLUMN: "Teleport"},  # neither column says whether it is normal
                {LABEL_COLUMN: "yes", TYPE_COLUMN: ""},
            ]
        )
    )
    assert enc.reason.tolist() == [
        KEPT,
        NON_NUMERIC,
        NON_FINITE,
        SHIFTED,
        SHIFTED,
        KEPT,
        KEPT,
        KEPT,
        KEPT,
        KEPT,
        BAD_LABEL,
        BAD_LABEL,
    ]
    assert enc.labels[[0, 8]].tolist() == [0, 1]
    # The label wins and the row is kept; a known type stands in for an unreadable label; each counted.
    assert enc.labels[5:8].tolist() == [1, 1, 0]
    assert enc.attack_types[5:9].tolist() == [UNNAMED_ATTACK, "Teleport", "Normal", "MITM"]
    assert enc.note[5:10].tolist() == [LABEL_TYPE_MISMATCH, UNKNOWN_TYPE, LABEL_FROM_TYPE, KEPT, KEPT]


@pytest.mark.parametrize(("raw", "name"), [
    ("DDoS_UDP", "DDoS_UDP"), (" ddos-udp ", "DDoS_UDP"), ("DDoS UDP", "DDoS_UDP"), ("MITM_attack", "MITM"),
    ("port scanning attack", "Port_Scanning"), ("normal", "Normal"), ("Normal_attack", "Normal_attack"),
    ("Brute force!", "Brute_force"), ("x" * 40, "x" * 32), ("", ""),
])
def test_type_name_maps_only_certain_respellings(raw: str, name: str) -> None:
    assert type_name(raw) == name


def test_label_disagreeing_with_type_is_kept_by_the_label() -> None:
    enc = encode_frame(frame([{LABEL_COLUMN: "0", TYPE_COLUMN: "XSS"}, {LABEL_COLUMN: "0", TYPE_COLUMN: "Benign"},
                              {LABEL_COLUMN: "1", TYPE_COLUMN: ""}]))
    assert enc.reason.tolist() == [KEPT, KEPT, KEPT]
    assert enc.labels.tolist() == [0, 0, 1]
    assert enc.attack_types.tolist() == ["Normal", "Normal", UNNAMED_ATTACK]
    assert enc.note.tolist() == [LABEL_TYPE_MISMATCH, UNKNOWN_TYPE, UNKNOWN_TYPE]


def test_unlabelled_frame() -> None:
    enc = encode_frame(frame([{"tcp.len": "3"}], labelled=False))
    assert enc.labels.tolist() == [-1] and enc.type_codes.tolist() == [-1]
    assert enc.reason.tolist() == [KEPT]


def test_missing_column_is_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"tcp\.len"):
        encode_frame(frame([{}]).drop(columns=["tcp.len"]))


def test_row_hashes() -> None:
    enc = encode_frame(
        frame(
            [
                {"tcp.len": "1"},
                {"tcp.len": "1.0"},
                {"tcp.len": "2"},
                {"tcp.len": "1", LABEL_COLUMN: "1", TYPE_COLUMN: "MITM"},
            ]
        )
    )
    h = row_hashes(enc.features, enc.labels, enc.type_codes)
    assert h.dtype == np.uint64
    assert h[0] == h[1] and len({int(x) for x in h}) == 3
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(20_000, N_FEATURES)).astype(np.float32)
    labels = np.zeros(len(x), dtype=np.int8)
    hashes = row_hashes(x, labels, labels)
    assert len(np.unique(hashes)) == len(np.unique(x, axis=0))
