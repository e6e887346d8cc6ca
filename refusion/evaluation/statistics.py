"""Bootstrap confidence intervals over test images: a row's mean, and paired differences between rows.

Percentile bootstrap: draw ``resamples`` sets of n image indices with replacement
(``numpy.random.default_rng(seed)``), take the mean over each set, and report the (1 - c)/2 and
(1 + c)/2 quantiles of those means (numpy's default linear interpolation). The draws depend only on
n, ``resamples`` and ``seed``, so every row of one evaluation is resampled with the same image sets;
a paired difference is the bootstrap of the per-image differences a_i - b_i, i.e. both rows on the
same resampled images, so that what the rows share (an image that is hard for every method)
cancels instead of widening the interval.

Images that are not independent (the two views of a stereo pair show one scene) can be resampled
together: with ``groups`` (one label per image) the draws pick groups, and each resampled mean is
the mean over all images of the picked groups (the cluster bootstrap).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

RESAMPLES = 10_000
SEED = 0
CONFIDENCE = 0.95
METRICS = ("psnr", "ssim", "lpips")
_BLOCK_ELEMENTS = 1 << 22  # indices drawn at a time (32 MiB of int64): bounds memory on large test sets


@dataclass(frozen=True)
class Interval:
    """A mean over n images and its bootstrap interval; low/high are None when undefined
    (fewer than two images, or a non-finite value such as the infinite PSNR of an exact match)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @property
    def defined(self) -> bool:
        return self.low is not None

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def _check(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of per-image values, got shape {array.shape}")
    return array


def _group_sums(rows: np.ndarray, groups: Sequence | None) -> tuple[np.ndarray, np.ndarray]:
    """(k, G) sums of each row's values per group and the (G,) group sizes; one group per image without ``groups``."""
    if groups is None:
        return rows, np.ones(rows.shape[-1])
    if len(groups) != rows.shape[-1]:
        raise ValueError(f"groups: one label per image expected, got {len(groups)} labels for {rows.shape[-1]} images")
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.zeros((rows.shape[0], inverse.max() + 1))
    np.add.at(sums, (slice(None), inverse), rows)
    return sums, np.bincount(inverse).astype(np.float64)


def bootstrap_means(values, *, resamples: int = RESAMPLES, seed: int = SEED, groups: Sequence | None = None
                    ) -> np.ndarray:
    """Means of ``resamples`` resampled image sets: (n,) values -> (resamples,), (k, n) -> (k, resamples).

    All k rows of a 2-D input share each resampled set of image indices (of group indices with
    ``groups``: then each mean is over all images of the picked groups).
    """
    if not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    array = np.asarray(values, dtype=np.float64)
    sums, sizes = _group_sums(np.atleast_2d(array), groups)
    n = sums.shape[-1]
    rng = np.random.default_rng(seed)
    means = np.empty((sums.shape[0], resamples))
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        indices = rng.integers(0, n, size=(stop - start, n))
        if groups is None:
            means[:, start:stop] = sums[:, indices].mean(axis=-1)
        else:
            means[:, start:stop] = sums[:, indices].sum(axis=-1) / sizes[indices].sum(axis=-1)
    return means if array.ndim == 2 else means[0]


def _interval(values: np.ndarray, resamples: int, seed: int, confidence: float, groups: Sequence | None
              ) -> Interval:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    mean = float(values.mean())
    units = values.size if groups is None else len(set(groups))   # what the bootstrap draws
    if units < 2 or not np.isfinite(values).all():
        return Interval(mean, None, None, int(values.size))
    tail = (1.0 - confidence) / 2
    means = bootstrap_means(values, resamples=resamples, seed=seed, groups=groups)
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(mean, float(low), float(high), int(values.size))


def mean_interval(values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED,
                  confidence: float = CONFIDENCE, groups: Sequence | None = None) -> Interval:
    """The mean of per-image values and its percentile-bootstrap interval (``groups``: one label per
    image; images with one label are resampled together)."""
    return _interval(_check(values, "values"), resamples, seed, confidence, groups)


def paired_difference(a: Sequence[float], b: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED,
                      confidence: float = CONFIDENCE, groups: Sequence | None = None) -> Interval:
    """mean(a) - mean(b) over the same images, with the interval of both rows resampled jointly."""
    a, b = _check(a, "a"), _check(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired difference needs one value per image in both rows, got {a.size} and {b.size}")
    return _interval(a - b, resamples, seed, confidence, groups)


def add_intervals(rows: Sequence[dict], reference: str | None = None, *, resamples: int = RESAMPLES,
                  seed: int = SEED, confidence: float = CONFIDENCE, groups: dict[str, str] | None = None) -> None:
    """Give each row ``<metric>_ci`` ([low, high] or None) from its ``per_image`` list, and, when
    ``reference`` names a row's ``method``, a ``difference`` to that row: {metric: Interval.as_dict()}.

    Rows must list the same images in the same order (they are paired by position). ``groups``:
    image name -> group label, for images resampled together (the views of a stereo pair).
    """
    ref = next((r for r in rows if r["method"] == reference), None) if reference is not None else None
    if reference is not None and ref is None:
        raise ValueError(f"reference {reference!r} is not a row; rows: {', '.join(r['method'] for r in rows)}")
    kw = dict(resamples=resamples, seed=seed, confidence=confidence)
    for row in rows:
        images = [p["image"] for p in row["per_image"]]
        kw["groups"] = None if groups is None else [groups[name] for name in images]
        if ref is not None and images != [p["image"] for p in ref["per_image"]]:
            raise ValueError(f"rows {row['method']!r} and {ref['method']!r} were scored on different images")
        row["difference"] = None if ref is None or row is ref else {}
        for key in METRICS:
            values = [p[key] for p in row["per_image"]]
            if any(v is None for v in values):
                row[f"{key}_ci"] = None
                continue
            interval = mean_interval(values, **kw)
            row[f"{key}_ci"] = [interval.low, interval.high] if interval.defined else None
            ref_values = [] if row["difference"] is None else [p[key] for p in ref["per_image"]]
            if ref_values and all(v is not None for v in ref_values):
                row["difference"][key] = paired_difference(values, ref_values, **kw).as_dict()
        if row["difference"] is not None:
            row["difference"]["reference"] = ref["method"]
