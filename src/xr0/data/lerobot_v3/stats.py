"""Per-feature statistics as LeRobot 0.6 computes, stores and aggregates them (meta/stats.json, per episode)."""

from __future__ import annotations


import numpy as np


QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot 0.6's q01 ... q99 (quantile normalisation, pi0.5's default)
STAT_KEYS = ("min", "max", "mean", "std", "count", *(f"q{round(q * 100):02d}" for q in QUANTILES))


QUANTILE_BINS = 5000  # LeRobot 0.6 estimates quantiles from a histogram of this many bins per channel


def histogram_quantile(x: np.ndarray, q: float, bins: int = QUANTILE_BINS) -> np.ndarray:
    """LeRobot 0.6's quantile estimate of each column of x (n, c) from one episode: a histogram of `bins` equal bins
    spanning [min - 1e-10, max + 1e-10], the first bin whose cumulative count reaches q * n, linear inside it."""
    out = np.empty(x.shape[1])
    target = q * len(x)
    for j in range(x.shape[1]):
        edges = np.linspace(x[:, j].min() - 1e-10, x[:, j].max() + 1e-10, bins + 1)
        cum = np.cumsum(np.histogram(x[:, j], bins=edges)[0])
        k = int(np.searchsorted(cum, target))
        if k == 0 or k >= len(cum):
            out[j] = edges[0] if k == 0 else edges[-1]
            continue
        inside = cum[k] - cum[k - 1]
        out[j] = edges[k] if inside == 0 else edges[k] + (target - cum[k - 1]) / inside * (edges[k + 1] - edges[k])
    return out


def feature_stats(values: np.ndarray, image: bool = False) -> dict[str, np.ndarray]:
    """One episode's statistics of a feature, as LeRobot 0.6 computes and stores them: per channel min, max, mean,
    std, count and the quantiles q01 ... q99 (its histogram estimate, `histogram_quantile`; a single frame: the
    mean, as LeRobot). `values`: (n, ...) for a vector feature (stats over axis 0), (n, H, W, 3) uint8 for a camera
    (per colour channel in [0, 1], shaped (3, 1, 1))."""
    x = np.asarray(values, np.float64)
    if image:
        x = x.reshape(-1, 3) / 255.0
    else:
        x = x.reshape(len(x), -1)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(values)])}
    out.update({key: histogram_quantile(x, q) if len(x) > 1 else out["mean"].copy()
                for key, q in zip(STAT_KEYS[5:], QUANTILES)})
    if image:
        out = {k: v if k == "count" else v.reshape(3, 1, 1) for k, v in out.items()}
    return out


def aggregate_stats(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dataset statistics of one feature from its per-episode statistics, LeRobot's way: min of the minima, max of
    the maxima, count-weighted mean, the pooled variance, and count-weighted means of the quantiles."""
    counts = np.array([float(e["count"][0]) for e in episodes])
    w = counts.reshape(-1, *([1] * episodes[0]["mean"].ndim)) / counts.sum()
    stack = {k: np.stack([e[k] for e in episodes]) for k in STAT_KEYS if k != "count"}
    mean = (stack["mean"] * w).sum(0)
    var = ((stack["std"] ** 2 + (stack["mean"] - mean) ** 2) * w).sum(0)
    out = {"min": stack["min"].min(0), "max": stack["max"].max(0), "mean": mean, "std": np.sqrt(var),
           "count": np.array([int(counts.sum())])}
    out.update({k: (stack[k] * w).sum(0) for k in STAT_KEYS[5:]})
    return out


def _json_stats(stats: dict[str, np.ndarray]) -> dict:
    return {k: (v.astype(int) if k == "count" else v.astype(float)).tolist() for k, v in stats.items()}
