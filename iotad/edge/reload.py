"""Model hot reload: notice a new global bundle in the model directory and load it without stopping scoring."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from iotad.core.bundle import BundleError
from iotad.edge.inference import NumpyDetector, Scorer
from iotad.features.sets import feature_set_of

log = logging.getLogger(__name__)

#: Loads a bundle directory for scoring (its features must be a feature set this version computes).
Loader = Callable[[Path], Scorer]


def load_numpy_detector(model_dir: Path) -> Scorer:
    """The agent's loader: the torch-free :class:`NumpyDetector`, whose features must be a known feature set."""
    det = NumpyDetector.load(model_dir)
    try:
        feature_set_of(det.feature_names or ())
    except ValueError as e:
        raise BundleError(f"{model_dir}: {e}") from e
    return det


class BundleWatcher:
    """Notices a new global bundle in ``model_dir`` (a ``stat`` of ``bundle.json`` per poll) and loads it.

    The ClientApp writes the bundle with an atomic directory swap, so the stat changes exactly when a
    complete new bundle is in place; :func:`iotad.core.bundle_read.read_bundle` retries if it changes while being read.

    Parameters
    ----------
    loader
        Builds the detector from the bundle directory; :func:`load_numpy_detector` by default (benchmarks
        pass the torch :class:`iotad.core.detector.Detector`'s to compare).
    """

    def __init__(self, model_dir: Path | str, loader: Loader = load_numpy_detector) -> None:
        self.model_dir = Path(model_dir)
        self.loader = loader
        self._signature: tuple[int, int, int] | None = None
        self._failed: tuple[int, int, int] | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.model_dir / "bundle.json")
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def check(self) -> Scorer | None:
        """Return a newly loaded detector if the bundle changed since the last load, else None."""
        sig = self._stat()
        if sig is None or sig == self._signature or sig == self._failed:
            return None
        try:
            det = self.loader(self.model_dir)
        except (BundleError, OSError, ValueError) as exc:
            log.warning("model bundle in %s not loadable (keeping the current one): %s", self.model_dir, exc)
            self._failed = sig
            return None
        if det.threshold is None:
            log.warning("model bundle in %s has no threshold; ignored", self.model_dir)
            self._failed = sig
            return None
        self._signature = sig
        return det
