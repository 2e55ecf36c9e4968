"""Partitioning raw CSVs into per-device files: exact rows, IID balance, Dirichlet skew."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iotad.data import schema
from iotad.data.partition import partition_csvs
from iotad.data.synthetic import generate_device_traffic

try:
    from iotad.data.loader import SchemaError
except ImportError:  # pragma: no cover - the loader ships with the package
    SchemaError = ValueError  # type: ignore[misc,assignment]

HEADER = ",".join(schema.RAW_COLUMNS)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def _body(paths: list[Path]) -> Counter[bytes]:
    return Counter(line for p in paths for line in _lines(p)[1:])


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two hand-made (generated) CSVs; the second has a short row, a long row and a quoted field."""
    d = tmp_path_factory.mktemp("src")
    a, b = d / "a.csv", d / "b.csv"
    generate_device_traffic(0, 3000, 9).to_csv(a, index=False, lineterminator="\n")
    frame = generate_device_traffic(1, 2000, 9)
    frame.loc[5, "http.request.full_uri"] = "http://192.168.0.128/a,b\nc"  # quoted, spans two lines
    frame.to_csv(b, index=False, lineterminator="\r\n")
    with b.open("ab") as f:
        f.write(b"1,2,3,Normal\r\n")  # too few fields
        f.write(b",".join([b"0"] * 64) + b",Normal")  # too many, and no final newline
    return [a, b]


def test_every_row_exactly_once_and_header_kept(source: list[Path], tmp_path: Path) -> None:
    for alpha in (None, 0.3):
        out = partition_csvs(source, 4, tmp_path / str(alpha), alpha=alpha, seed=1)
        assert out == [tmp_path / str(alpha) / f"device-{k}" / "traffic.csv" for k in range(4)]
        for p in out:
            assert _lines(p)[0].decode() == HEADER
        assert _body(out) == _body(source)
        marker = json.loads((tmp_path / str(alpha) / "dataset.json").read_text())
        assert marker["kind"] == "edge-iiotset"
        assert marker["rows_total"] == 5002 and marker["rows_wrong_column_count"] == 2
        assert sum(marker["rows_per_device"]) == 5002
        assert marker["split"] == ("iid" if alpha is None else "dirichlet")


def test_quoted_multiline_record_stays_whole(source: list[Path], tmp_path: Path) -> None:
    out = partition_csvs(source, 3, tmp_path, seed=0)
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False, on_bad_lines="skip") for p in out]
    uris = pd.concat(frames)["http.request.full_uri"]
    assert (uris == "http://192.168.0.128/a,b\nc").sum() == 1


def test_iid_is_balanced(source: list[Path], tmp_path: Path) -> None:
    out = partition_csvs(source, 3, tmp_path, seed=2)
    sizes = [len(_lines(p)) - 1 for p in out]
    assert max(sizes) - min(sizes) <= 1
    # Each device gets about a third of every common class.
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False, on_bad_lines="skip") for p in out]
    normal = np.array([(f[schema.TYPE_COLUMN] == schema.NORMAL).sum() for f in frames], dtype=float)
    assert np.all(np.abs(normal / normal.sum() - 1 / 3) < 0.03)


def test_dirichlet_skews_classes(source: list[Path], tmp_path: Path) -> None:
    out = partition_csvs(source, 4, tmp_path, alpha=0.1, seed=3)
    marker = json.loads((tmp_path / "dataset.json").read_text())
    per_device = marker["traffic_types_per_device"]
    shares = []
    for t in schema.TRAFFIC_TYPES:
        counts = np.array([d.get(t, 0) for d in per_device], dtype=float)
        if counts.sum() >= 50:
            shares.append(counts.max() / counts.sum())
    assert np.mean(shares) > 0.6  # IID would give ~0.25
    mixes = [np.array([d.get(t, 0) for t in schema.TRAFFIC_TYPES], float) for d in per_device]
    mixes = [m / m.sum() for m in mixes if m.sum()]
    assert max(0.5 * np.abs(a - b).sum() for a in mixes for b in mixes) > 0.3
    # Same seed, same files; another seed, another split.
    again = partition_csvs(source, 4, tmp_path / "again", alpha=0.1, seed=3)
    assert [p.read_bytes() for p in out] == [p.read_bytes() for p in again]
    other = partition_csvs(source, 4, tmp_path / "other", alpha=0.1, seed=4)
    assert [p.read_bytes() for p in out] != [p.read_bytes() for p in other]


def test_bad_inputs_raise_schema_errors(source: list[Path], tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="no such file"):
        partition_csvs([tmp_path / "missing.csv"], 2, tmp_path / "o1")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(SchemaError, match="header"):
        partition_csvs([bad], 2, tmp_path / "o2")
    shuffled = tmp_path / "shuffled.csv"
    cols = list(schema.RAW_COLUMNS)
    shuffled.write_text(",".join(cols[::-1]) + "\n")
    with pytest.raises(SchemaError, match="order"):
        partition_csvs([source[0], shuffled], 2, tmp_path / "o3")
    assert issubclass(SchemaError, ValueError)
    with pytest.raises(ValueError):
        partition_csvs(source, 0, tmp_path / "o4")
    with pytest.raises(ValueError):
        partition_csvs(source, 2, tmp_path / "o5", alpha=0.0)


def test_real_files(tmp_path: Path, real: Path) -> None:
    files = sorted(real.glob("*.csv"))
    out = partition_csvs(files, 3, tmp_path, alpha=0.5, seed=0, chunk_rows=997)
    assert _body(out) == _body(files)
    marker = json.loads((tmp_path / "dataset.json").read_text())
    assert marker["kind"] == "edge-iiotset" and marker["sources"] == [f.name for f in files]
    types = Counter(t for d in marker["traffic_types_per_device"] for t, n in d.items() for _ in range(n))
    assert types[schema.NORMAL] > 0 and types["MITM"] > 0
    loader = pytest.importorskip("iotad.data.loader")
    total = sum(loader.load_traffic(p, dedupe=False).rows_read for p in out)
    assert total == marker["rows_total"]


def test_repartitioned_synthetic_data_stays_labelled_synthetic(tmp_path: Path) -> None:
    from iotad.data.synthetic import write_synthetic

    paths = write_synthetic(tmp_path / "synth", devices=2, rows_per_device=200, seed=0)
    partition_csvs(paths, 2, tmp_path / "re", alpha=0.5, seed=0)
    assert json.loads((tmp_path / "re" / "dataset.json").read_text())["kind"] == "synthetic"
