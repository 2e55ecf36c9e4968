"""Raw Edge-IIoTset strings -> fixed-width float32 features, with per-row reject reasons.

Every value goes through one canonical form before it is encoded: all empty spellings
(``""``, ``"0"``, ``"0.0"``, ``"0x00000000"``, ``"NaN"``...) become the same empty value,
hex numbers are parsed, and numeric-looking categories are written canonically
(``"1.0"`` -> ``"1"``). Captures spell "no value" differently per class, so anything
less lets the spelling alone give the label away.

Parsing works on the distinct values of each column (``pd.factorize``), not per cell:
most columns hold a handful of values, so millions of cells cost one hash pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from iotad.data.schema import (
    BINARY_COLUMNS,
    CATEGORICAL_COLUMNS,
    CATEGORICAL_VOCAB,
    EMPTY_SPELLINGS,
    LABEL_COLUMN,
    LABEL_NOTES,
    N_FEATURES,
    NORMAL,
    NUMERIC_COLUMNS,
    REJECT_REASONS,
    TRAFFIC_TYPES,
    TYPE_COLUMN,
    UNNAMED_ATTACK,
    SchemaError,
)

OTHER = "<other>"
KEPT = 0
COLUMN_COUNT, NON_NUMERIC, NON_FINITE, SHIFTED, BAD_LABEL, DUPLICATE = range(1, len(REJECT_REASONS) + 1)

# The one value every empty spelling becomes (numeric columns read it as 0).
EMPTY = ""
UNLABELLED = -1
TYPE_CODES: dict[str, int] = {name: i for i, name in enumerate(TRAFFIC_TYPES)}
NORMAL_CODE = TYPE_CODES[NORMAL]
OTHER_TYPE = len(TRAFFIC_TYPES)  # a type outside TRAFFIC_TYPES, kept under its own name
UNKNOWN_TYPE, LABEL_TYPE_MISMATCH, LABEL_FROM_TYPE = range(1, len(LABEL_NOTES) + 1)

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_HEX = re.compile(r"[+-]?0[xX][0-9a-fA-F]+")
# Strict decimal: float() alone would also accept "1_000", "nan" and "infinity".
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INFINITY = re.compile(r"[+-]?(?:inf|infinity)", re.IGNORECASE)

_NUMERIC_INDEX = {col: i for i, col in enumerate(NUMERIC_COLUMNS)}
_BINARY_INDEX = np.array([_NUMERIC_INDEX[c] for c in BINARY_COLUMNS], dtype=np.intp)
_CATEGORY_OFFSET: dict[str, int] = {}
_offset = len(NUMERIC_COLUMNS)
for _col in CATEGORICAL_COLUMNS:
    _CATEGORY_OFFSET[_col] = _offset
    _offset += len(CATEGORICAL_VOCAB[_col]) + 1
assert _offset == N_FEATURES


def parse_number(raw: str) -> float | None:
    """Parse one field as a number: decimal or hex, empty spellings as 0.

    Returns
    -------
    float or None
        ``None`` when the field is not a number (``inf`` and overflow come back as ``inf``).
    """
    text = raw.strip()
    if text in EMPTY_SPELLINGS:
        return 0.0
    if _HEX.fullmatch(text):
        return float(int(text, 16))
    if _DECIMAL.fullmatch(text) or _INFINITY.fullmatch(text):
        return float(text)
    return None


def canonical_token(raw: str) -> str:
    """Canonical spelling of a categorical field; every empty spelling gives ``EMPTY``.

    Numeric-looking values are rewritten from their value ("1.0", "0x00000001" -> "1"),
    so that the same category spelled two ways lands in the same one-hot slot.
    """
    text = raw.strip()
    if text in EMPTY_SPELLINGS:
        return EMPTY
    if _HEX.fullmatch(text):
        number = int(text, 16)
        return EMPTY if number == 0 else str(number)
    if _DECIMAL.fullmatch(text):
        value = float(text)
        if value == 0.0:
            return EMPTY
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    return text


def _text(value: object) -> str:
    # Missing values (NaN/None, from a frame read without keep_default_na=False) are empty.
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return EMPTY
    return str(value)


def _map_unique(values: npt.NDArray[np.object_], func: Callable[[str], object], dtype: type) -> np.ndarray:
    """Apply ``func`` to each distinct value and broadcast the results back to the cells."""
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    lut: np.ndarray = np.array([func(_text(u)) for u in uniques], dtype=dtype)
    if len(lut) == 0:
        return np.empty(len(values), dtype=dtype)
    return lut[codes]


def _number_or_nan(raw: str) -> float:
    value = parse_number(raw)
    return math.nan if value is None else value


def parse_numeric_column(
    values: npt.NDArray[np.object_],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8]]:
    """Parse a column of raw strings.

    Returns
    -------
    values : float64 array
        Parsed values, 0 where empty or invalid.
    status : int8 array
        ``KEPT``, ``NON_NUMERIC`` (garbage) or ``NON_FINITE`` (inf, or beyond float32 range).
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    # C parser first; Python (hex, padded or empty spellings, garbage) only where it fails.
    lut = np.asarray(pd.to_numeric(uniques, errors="coerce"), dtype=np.float64)
    for i in np.flatnonzero(np.isnan(lut)):
        lut[i] = _number_or_nan(_text(uniques[i]))
    parsed = lut[codes] if len(lut) else np.zeros(len(values), dtype=np.float64)
    status = np.zeros(len(parsed), dtype=np.int8)
    status[np.abs(parsed) > _FLOAT32_MAX] = NON_FINITE  # includes +-inf; NaN compares False
    status[np.isnan(parsed)] = NON_NUMERIC
    parsed[status != KEPT] = 0.0
    parsed += 0.0  # "-0" -> +0.0, so the bytes do not depend on the sign of zero
    return parsed, status


def category_codes(values: npt.NDArray[np.object_], column: str) -> npt.NDArray[np.int64]:
    """One-hot slot per cell within ``column``'s block: vocabulary index, ``len(vocab)`` for
    "other", -1 for empty."""
    vocab = CATEGORICAL_VOCAB[column]
    index = {v: i for i, v in enumerate(vocab)}

    def slot(raw: str) -> int:
        token = canonical_token(raw)
        return -1 if token == EMPTY else index.get(token, len(vocab))

    return _map_unique(values, slot, np.int64)


def _label_value(raw: str) -> int:
    # Strict: an empty spelling ("", "nan") is a missing label, not label 0.
    text = raw.strip()
    if not _DECIMAL.fullmatch(text):
        return -2
    value = float(text)
    return int(value) if value in (0.0, 1.0) else -2


def _spelling_key(name: str) -> str:
    return re.sub(r"[\s_-]+", "_", name.strip()).strip("_").lower()


# Certain respellings only: case, spaces, hyphens and a trailing "_attack" (the raw captures' file names).
_TYPE_BY_KEY: dict[str, str] = {_spelling_key(t): t for t in TRAFFIC_TYPES}
_TYPE_BY_KEY.update({f"{k}_attack": t for k, t in list(_TYPE_BY_KEY.items()) if t != NORMAL})
_NAME_LENGTH = 32  # what the device cache stores (U32)


def type_name(raw: str) -> str:
    """The TRAFFIC_TYPES name an ``Attack_type`` spelling certainly means, else the spelling itself
    (letters, digits and ``_.-`` only, at most 32 characters); "" when empty."""
    text = raw.strip()
    known = _TYPE_BY_KEY.get(_spelling_key(text))
    if known is not None:
        return known
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:_NAME_LENGTH].strip("_")


@dataclass
class EncodedFrame:
    """Every row of a raw frame encoded, with why it must be rejected (``KEPT`` if not)."""

    features: npt.NDArray[np.float32]  # (n, N_FEATURES)
    reason: npt.NDArray[np.int8]  # (n,), KEPT or a reason code (1-based index into REJECT_REASONS)
    labels: npt.NDArray[np.int8]  # (n,), UNLABELLED when the frame has no label columns
    type_codes: npt.NDArray[np.int8]  # (n,), index into TRAFFIC_TYPES, OTHER_TYPE for another name, -1 unlabelled
    attack_types: npt.NDArray[np.object_]  # (n,) the row's type name, "" when unlabelled
    note: npt.NDArray[np.int8]  # (n,), 0 or a 1-based index into LABEL_NOTES


def _raw(frame: pd.DataFrame, column: str) -> npt.NDArray[np.object_]:
    return frame[column].to_numpy(dtype=object)


def encode_frame(frame: pd.DataFrame, *, labelled: bool | None = None) -> EncodedFrame:
    """Encode a frame of raw strings (any superset of the kept columns).

    Parameters
    ----------
    frame
        Raw fields as strings (``read_csv(dtype=str, keep_default_na=False)``).
    labelled
        Whether to read and check ``Attack_label``/``Attack_type``; default: if present.
    """
    if labelled is None:
        labelled = LABEL_COLUMN in frame.columns and TYPE_COLUMN in frame.columns
    needed = [*NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS, *((LABEL_COLUMN, TYPE_COLUMN) if labelled else ())]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise SchemaError(f"frame lacks columns: {', '.join(missing[:5])}")

    n = len(frame)
    features = np.zeros((n, N_FEATURES), dtype=np.float32)
    reason = np.zeros(n, dtype=np.int8)
    bad_numeric = np.zeros(n, dtype=bool)
    bad_finite = np.zeros(n, dtype=bool)
    for j, col in enumerate(NUMERIC_COLUMNS):
        values, status = parse_numeric_column(_raw(frame, col))
        features[:, j] = values
        bad_numeric |= status == NON_NUMERIC
        bad_finite |= status == NON_FINITE
    binary = features[:, _BINARY_INDEX]
    shifted = ((binary != 0.0) & (binary != 1.0)).any(axis=1)

    rows = np.arange(n)
    for col in CATEGORICAL_COLUMNS:
        slots = category_codes(_raw(frame, col), col)
        hit = slots >= 0
        features[rows[hit], _CATEGORY_OFFSET[col] + slots[hit]] = 1.0

    if labelled:
        labels, types, names, note = _labels(_raw(frame, LABEL_COLUMN), _raw(frame, TYPE_COLUMN))
        bad_label = labels < 0
    else:
        labels = np.full(n, UNLABELLED, dtype=np.int8)
        types = np.full(n, -1, dtype=np.int8)
        names = np.full(n, "", dtype=object)
        note = np.zeros(n, dtype=np.int8)
        bad_label = np.zeros(n, dtype=bool)

    # Reverse priority, so the first failing check in REJECT_REASONS is the one kept.
    for code, mask in ((BAD_LABEL, bad_label), (SHIFTED, shifted), (NON_FINITE, bad_finite),
                       (NON_NUMERIC, bad_numeric)):
        reason[mask] = code
    return EncodedFrame(features=features, reason=reason, labels=labels, type_codes=types, attack_types=names,
                        note=note)


def _labels(
    label_raw: npt.NDArray[np.object_], type_raw: npt.NDArray[np.object_]
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int8], npt.NDArray[np.object_], npt.NDArray[np.int8]]:
    """Label (-2 when neither column says), type code, type name and note of each row.

    ``Attack_label`` decides; a known ``Attack_type`` stands in for an unreadable label. A row is
    rejected (label -2) only when neither tells whether it is normal.
    """
    label = _map_unique(label_raw, _label_value, np.int8)
    name = _map_unique(type_raw, type_name, object)
    code = _map_unique(type_raw, lambda raw: TYPE_CODES.get(type_name(raw), OTHER_TYPE), np.int8)
    known, type_label = code != OTHER_TYPE, np.where(code == NORMAL_CODE, 0, 1)
    note = np.zeros(len(label), dtype=np.int8)
    readable = label >= 0
    from_type = ~readable & known
    label = np.where(from_type, type_label, label).astype(np.int8)
    note[from_type] = LABEL_FROM_TYPE
    note[readable & ~known] = UNKNOWN_TYPE
    note[readable & known & (type_label != label)] = LABEL_TYPE_MISMATCH
    # The label wins: a normal row is "Normal" whatever its type says; an attack typed "Normal" or
    # nothing has no name.
    unnamed = (label == 1) & ((name == "") | (code == NORMAL_CODE))
    name = np.where(label == 0, NORMAL, np.where(unnamed, UNNAMED_ATTACK, name)).astype(object)
    code = np.where(label == 0, NORMAL_CODE, np.where(unnamed, OTHER_TYPE, code)).astype(np.int8)
    return label, code, name, note


_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64 finaliser (a bijection on 64-bit words); uint64 arithmetic wraps silently."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def row_hashes(
    features: npt.NDArray[np.float32], labels: npt.NDArray[np.int8], type_codes: npt.NDArray[np.int8]
) -> npt.NDArray[np.uint64]:
    """64-bit hash of each encoded row (feature bytes, label and type), for deduplication.

    Two rows hash equal iff their encodings are byte-identical (up to 64-bit collisions:
    ~1e-7 chance of any among 2 M rows).
    """
    n = len(features)
    width = N_FEATURES + 1 + (N_FEATURES + 1) % 2  # even: viewable as uint64 pairs
    words = np.zeros((n, width), dtype=np.uint32)
    words[:, :N_FEATURES] = np.ascontiguousarray(features, dtype=np.float32).view(np.uint32)
    words[:, N_FEATURES] = labels.astype(np.uint8).astype(np.uint32) | (
        type_codes.astype(np.uint8).astype(np.uint32) << np.uint32(8)
    )
    pairs = words.view(np.uint64)
    h = np.full(n, np.uint64(0x5EED), dtype=np.uint64)
    for j in range(pairs.shape[1]):
        h = _mix64(h ^ (pairs[:, j] + np.uint64(((j + 1) * _GOLDEN) & _MASK64)))
    return h
