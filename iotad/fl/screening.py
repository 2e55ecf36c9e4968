"""What the server does with device replies before it uses them: drop the unusable, fix their order.

Poisoned or broken updates (an error reply, missing weights, wrong shapes, NaN/Inf) are rejected and
counted by reason; the survivors are sorted by a digest of their content, so float sums over them do not
depend on the order in which devices answered.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import Message


def screen_updates(replies: Iterable[Message], reference: Sequence[np.ndarray]) -> tuple[list[Message], Counter[str]]:
    """Drop train replies that failed or carry unusable weights; count each reason."""
    valid: list[Message] = []
    rejected: Counter[str] = Counter()
    for reply in replies:
        if reply.has_error():
            rejected["error"] += 1
            continue
        records = list(reply.content.array_records.values())
        if len(records) != 1 or "num-examples" not in next(iter(reply.content.metric_records.values()), {}):
            rejected["malformed"] += 1
            continue
        arrays = records[0].to_numpy_ndarrays()
        if len(arrays) != len(reference) or any(a.shape != r.shape for a, r in zip(arrays, reference, strict=True)):
            rejected["shape"] += 1
        elif not all(np.isfinite(a).all() for a in arrays):
            rejected["non_finite"] += 1
        else:
            valid.append(reply)
    return valid, rejected


def _digest(reply: Message) -> bytes:
    h = hashlib.sha256()
    for name, record in sorted(reply.content.array_records.items()):
        h.update(name.encode())
        for array in record.to_numpy_ndarrays():
            h.update(np.ascontiguousarray(array).tobytes())
    for name, metrics in sorted(reply.content.metric_records.items()):
        h.update(repr((name, sorted(metrics.items()))).encode())
    return h.digest()


def in_content_order(replies: Iterable[Message]) -> list[Message]:
    """Replies sorted by a digest of their content.

    Replies arrive in whatever order devices finish, and float sums (weighted averages, merged statistics)
    depend on the order of their terms; a fixed order makes a run reproducible bit for bit.
    """
    return sorted(replies, key=_digest)
