"""Loader on hand-made quirk fixtures and on real Edge-IIoTset rows (never copied into the repo).

The real files live outside the repository, in ``<workspace>/shared/data/edge-iiotset-real``
(``../shared`` from the repo root). Their absence fails these tests unless
``IOTAD_NO_REAL_DATA=1``; ``IOTAD_REAL_DATA=<dir>`` points elsewhere.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from iotad.data.loader import SchemaError, Traffic, iter_traffic, load_traffic
from iotad.data.schema import FEATURE_NAMES, LABEL_COLUMN, N_FEATURES, RAW_COLUMNS, REJECT_REASONS, TYPE_COLUMN
from tests.conftest import REAL_MITM, REAL_NORMAL, respell

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
QUIRKS = FIXTURES / "edge_quirks.csv"


def assert_same(a: Traffic, b: Traffic) -> None:
    assert np.array_equal(a.features, b.features)
    assert a.features.tobytes() == b.features.tobytes()
    assert np.array_equal(a.labels, b.labels)
    assert list(a.attack_types) == list(b.attack_types)
    assert np.array_equal(a.row_index, b.row_index)
    assert a.rejected == b.rejected and a.rows_read == b.rows_read


def write_rows(path: Path, header: list[str], rows: list[list[str]], newline: str = "\n") -> Path:
    path.write_text(newline.join(",".join(r) for r in [header, *rows]) + newline)
    return path


# --- the hand-made fixture -------------------------------------------------------------------


def test_quirks_fixture_counts_every_reason() -> None:
    t = load_traffic(QUIRKS)
    assert t.rows_read == 17
    # Row 10 (label "2", type DDoS_UDP) takes its label from the type and is then a duplicate of row 2.
    assert t.rejected == {"column_count": 3, "non_numeric": 1, "non_finite": 2, "shifted": 1,
                          "bad_label": 0, "duplicate": 3}
    assert len(t) + sum(t.rejected.values()) == t.rows_read
    # Row 11 (type "Teleport") is kept under its own name, row 12 (label 0, type DDoS_TCP) by its label.
    assert t.label_notes == {"unknown_type": 1, "label_type_mismatch": 1, "label_from_type": 0}
    assert t.row_index.tolist() == [0, 2, 11, 12, 13, 14, 15]
    assert t.labels.tolist() == [0, 1, 1, 0, 1, 0, 0]
    assert list(t.attack_types) == ["Normal", "DDoS_UDP", "Teleport", "Normal", "SQL_injection", "Normal", "Normal"]
    assert t.features.dtype == np.float32 and t.features.shape == (7, N_FEATURES)
    f = {name: t.features[[0, 1, 4, 5, 6], i] for i, name in enumerate(FEATURE_NAMES)}  # rows 0, 2, 13, 14, 15
    assert f["tcp.flags"].tolist() == [24.0, 0.0, 24.0, 24.0, 24.0]  # hex parsed
    assert f["tcp.checksum"][0] == 0xA1B2
    assert f["dns.qry.name.len=1"].tolist() == [0, 0, 0, 1, 0]  # "1.0" is the vocabulary's "1"
    assert f["http.request.method=GET"].tolist() == [0, 0, 1, 0, 0]  # row with quoted commas parsed
    assert f["mqtt.topic=<other>"].tolist() == [0, 0, 0, 0, 1]
    assert load_traffic(QUIRKS, dedupe=False).label_notes["label_from_type"] == 1


def test_rows_differing_only_in_empty_spelling_are_duplicates() -> None:
    t = load_traffic(QUIRKS, dedupe=False)
    by_row = dict(zip(t.row_index.tolist(), t.features, strict=True))
    assert by_row[1].tobytes() == by_row[0].tobytes()  # row 1 spells empties "0.0", row 0 "0"


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 7, 100_000])
def test_chunking_does_not_change_the_result(chunk_rows: int) -> None:
    assert_same(load_traffic(QUIRKS, chunk_rows=chunk_rows), load_traffic(QUIRKS))


def test_iter_traffic_is_load_without_dedupe() -> None:
    parts = list(iter_traffic(QUIRKS, chunk_rows=4))
    assert len(parts) == 5
    assert_same(Traffic.concat(parts), load_traffic(QUIRKS, dedupe=False))
    assert sum(p.rejected["duplicate"] for p in parts) == 0


def test_empty_spelling_rewrite_is_byte_identical_on_fixture(tmp_path: Path) -> None:
    text = QUIRKS.read_text()
    rewritten = respell(text)
    assert rewritten != text and "0.0," in text and "0x00000000" in text
    assert_same(load_traffic(write_text(tmp_path / "respelled.csv", rewritten)), load_traffic(QUIRKS))


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_crlf_blank_lines_and_gzip_read_the_same(tmp_path: Path) -> None:
    text = QUIRKS.read_text()
    crlf = write_text(tmp_path / "crlf.csv", text.replace("\n", "\r\n"))
    lines = text.splitlines()
    blanks = write_text(tmp_path / "blank.csv", "\n".join([*lines[:3], "", *lines[3:], ""]) + "\n")
    gz = tmp_path / "q.csv.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    no_newline = write_text(tmp_path / "eof.csv", text.rstrip("\n"))
    reference = load_traffic(QUIRKS)
    for path in (crlf, blanks, gz, no_newline):
        assert_same(load_traffic(path), reference)


def test_multiple_files_number_rows_across_files() -> None:
    t = load_traffic([QUIRKS, QUIRKS], dedupe=False)
    single = load_traffic(QUIRKS, dedupe=False)
    assert t.rows_read == 34
    assert t.row_index.tolist() == single.row_index.tolist() + (single.row_index + 17).tolist()
    deduped = load_traffic([QUIRKS, QUIRKS])
    assert len(deduped) == len(load_traffic(QUIRKS))  # the second copy is all duplicates
    assert deduped.rejected["duplicate"] == 3 + len(single)  # the first copy's own 3, then all of the second


def test_malformed_quotes_and_extreme_widths_are_column_count(tmp_path: Path) -> None:
    good = QUIRKS.read_text().splitlines()[1]
    fields = good.split(",")
    rows = [
        fields,
        ['"unterminated', *fields[1:]],  # odd quote count: cannot be aligned
        [*fields, *(["x"] * 500)],  # far more fields than any spare-column trick would allow
        fields[:1],
        [""],  # a blank line is not a row
        ['"a,b"', *fields[1:]],  # quoted comma: still 63 fields
    ]
    t = load_traffic(write_rows(tmp_path / "w.csv", list(RAW_COLUMNS), rows), dedupe=False)
    assert t.rejected["column_count"] == 3
    assert t.row_index.tolist() == [0, 4] and t.rows_read == 5


def test_unlabelled_input(tmp_path: Path) -> None:
    labelled = load_traffic(QUIRKS, dedupe=False)
    lines = QUIRKS.read_text().splitlines()
    keep = [0, 1, 3, 14, 15]  # header + rows of full width
    rows = [line.rsplit(",", 2)[0] for i, line in enumerate(lines) if i in keep]
    live = write_text(tmp_path / "live.csv", "\n".join(rows) + "\n")
    t = load_traffic(live, labelled=False, dedupe=False)
    assert t.labels.tolist() == [-1] * 4 and list(t.attack_types) == [""] * 4
    expected = labelled.take(np.isin(labelled.row_index, [0, 2, 13, 14])).features
    assert t.features.tobytes() == expected.tobytes()
    ignored = load_traffic(QUIRKS, labelled=False, dedupe=False)
    assert (ignored.labels == -1).all() and ignored.rejected["bad_label"] == 0
    with pytest.raises(SchemaError, match="Attack_label"):
        load_traffic(live)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "empty file"),
        (",".join(c for c in RAW_COLUMNS if c != "tcp.len").encode() + b"\n", "missing 'tcp.len'"),
        (",".join([*RAW_COLUMNS, "bogus"]).encode() + b"\n", "unknown 'bogus'"),
        (",".join([*RAW_COLUMNS, "tcp.len"]).encode() + b"\n", "repeated 'tcp.len'"),
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", "header is not"),
        (b"0,1,2,3\n4,5,6,7\n", "header is not"),  # no header line at all
    ],
)
def test_bad_files_raise_one_line_schema_error(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "in.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SchemaError, match=re.escape(message)) as info:
        load_traffic([QUIRKS, path])  # checked before any row is read
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_header_only_file_and_column_order(tmp_path: Path) -> None:
    empty = load_traffic(write_text(tmp_path / "h.csv", ",".join(RAW_COLUMNS) + "\n"))
    assert len(empty) == 0 and empty.features.shape == (0, N_FEATURES) and empty.rows_read == 0
    lines = [line.split(",") for line in QUIRKS.read_text().splitlines()[:4]]
    order = list(reversed(range(len(RAW_COLUMNS))))
    rows = [[r[i] for i in order] for r in lines[1:]]
    shuffled = write_rows(tmp_path / "r.csv", [lines[0][i] for i in order], rows)
    assert load_traffic(shuffled).features.tobytes() == load_traffic(QUIRKS).take([0, 1]).features.tobytes()


def test_traffic_take_and_concat() -> None:
    t = load_traffic(QUIRKS)
    sub = t.take(np.array([4, 0]))
    assert sub.row_index.tolist() == [13, 0] and sub.rejected == t.rejected and sub.label_notes == t.label_notes
    both = Traffic.concat([t, sub])
    assert len(both) == len(t) + 2 and both.rows_read == 2 * t.rows_read
    assert both.rejected["duplicate"] == 2 * t.rejected["duplicate"]
    assert both.label_notes["unknown_type"] == 2 * t.label_notes["unknown_type"]
    assert len(Traffic.concat([])) == 0


# --- real Edge-IIoTset rows --------------------------------------------------------------------


def test_real_normal_capture(real: Path) -> None:
    t = load_traffic(real / REAL_NORMAL)
    # 762 packets repeat once identifiers (time, hosts, ports, payload) are dropped.
    assert t.rows_read == 5000
    assert t.rejected == {**dict.fromkeys(REJECT_REASONS, 0), "duplicate": 762}
    assert len(t) == 4238 and set(t.attack_types) == {"Normal"} and (t.labels == 0).all()
    flags = t.features[:, FEATURE_NAMES.index("tcp.flags")]
    assert set(np.unique(flags).tolist()) <= {2.0, 4.0, 16.0, 17.0, 18.0, 24.0, 25.0}  # parsed hex
    assert t.features[:, FEATURE_NAMES.index("mqtt.topic=Distance")].sum() > 0


def test_real_mitm_capture(real: Path) -> None:
    t = load_traffic(real / REAL_MITM)
    assert t.rows_read == 1229
    # Shifted rows carry ports and counters in 0/1 fields (dns.qry.qu, tcp.connection.*); the
    # mDNS names and "0.0"/"6.0" times sit in dropped identifier columns and cost nothing.
    assert t.rejected == {**dict.fromkeys(REJECT_REASONS, 0), "shifted": 242, "duplicate": 856}
    assert len(t) == 131 and set(t.attack_types) == {"MITM"} and (t.labels == 1).all()
    undeduped = load_traffic(real / REAL_MITM, dedupe=False)
    assert len(undeduped) == 987  # most rows are usable before deduplication
    assert len(np.unique(undeduped.features, axis=0)) == len(t)


@pytest.mark.parametrize("name", [REAL_NORMAL, REAL_MITM])
def test_real_empty_spelling_rewrite_is_byte_identical(real: Path, tmp_path: Path, name: str) -> None:
    text = (real / name).read_text()
    rewritten = respell(text)
    assert rewritten != text
    respelled = write_text(tmp_path / name, rewritten)
    assert_same(load_traffic(respelled), load_traffic(real / name))
    assert_same(load_traffic(respelled, dedupe=False), load_traffic(real / name, dedupe=False))


def test_real_files_together_in_small_chunks(real: Path) -> None:
    paths = [real / REAL_NORMAL, real / REAL_MITM]
    t = load_traffic(paths, chunk_rows=997)
    assert_same(t, load_traffic(paths))
    assert len(t) == 4238 + 131 and t.rows_read == 6229
    assert t.row_index.max() < 6229 and (np.diff(t.row_index) > 0).all()
    assert {LABEL_COLUMN, TYPE_COLUMN} <= set(RAW_COLUMNS)
