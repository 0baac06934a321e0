"""Subsets of sources, the train/valid/test split per source and the weighted blend of the training split,
all fixed by the seed."""

from __future__ import annotations

import numpy as np

# Distinct random streams for the split, the blend, the epoch order and subsets, all derived from --seed.
SPLIT_STREAM, BLEND_STREAM, EPOCH_STREAM, SUBSET_STREAM = 1, 2, 3, 4


def subset_indices(n: int, size: int, seed: int, source: int) -> np.ndarray:
    """`size` of the n records of one source (`PATH:N`), all of them when size >= n.

    A seeded random choice rather than the first `size`, since files are often sorted by topic or
    length; sorted, so reading follows the file order.
    """
    if size >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([seed, SUBSET_STREAM, source])
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)


def split_indices(n: int, fractions: tuple[float, float, float], seed: int, source: int) -> list[np.ndarray]:
    """Shuffle the n samples of one source and cut them at the cumulative fractions (Megatron's rule).

    Each part is returned sorted, so reading it follows the file order.
    """
    perm = np.random.default_rng([seed, SPLIT_STREAM, source]).permutation(n)
    b1 = round(fractions[0] * n)
    b2 = round((fractions[0] + fractions[1]) * n)
    return [np.sort(perm[:b1]), np.sort(perm[b1:b2]), np.sort(perm[b2:])]


def blend(parts: list[np.ndarray], weights: list[float | None], seed: int) -> tuple[np.ndarray, list[dict]]:
    """One epoch of the training mixture: sample ids drawn from each source in proportion to its weight.

    Without weights every sample is used once. With weights the epoch keeps the total size
    (the sum of the sources) and source i gets round(p_i * total) samples: whole copies of it, plus
    a seeded subset for the remainder. What is repeated or left out is reported, never silent.
    """
    sizes = [len(p) for p in parts]
    if all(w is None for w in weights):
        report = [{"source": i, "available": n, "used": n} for i, n in enumerate(sizes)]
        return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), report
    w = np.array([0.0 if x is None else float(x) for x in weights])
    p = w / w.sum()
    targets = _largest_remainder(p * sum(sizes))
    out, report = [], []
    for i, (ids, target) in enumerate(zip(parts, targets)):
        if len(ids) == 0:
            report.append({"source": i, "available": 0, "used": 0, "weight": float(p[i])})
            continue
        copies, rest = divmod(int(target), len(ids))
        rng = np.random.default_rng([seed, BLEND_STREAM, i])
        chosen = np.sort(rng.choice(ids, size=rest, replace=False))
        out.append(np.concatenate([np.tile(ids, copies), chosen]))
        report.append(
            {
                "source": i,
                "available": len(ids),
                "used": int(target),
                "weight": float(p[i]),
                "repeated_copies": copies,
                "left_out_this_mix": len(ids) - rest if copies == 0 else 0,
            }
        )
    return (np.concatenate(out) if out else np.zeros(0, np.int64)), report


def _largest_remainder(quotas: np.ndarray) -> np.ndarray:
    """Integers that sum to round(sum(quotas)), each within 1 of its quota (deterministic ties)."""
    floors = np.floor(quotas).astype(np.int64)
    missing = round(quotas.sum()) - int(floors.sum())
    order = np.argsort(-(quotas - floors), kind="stable")
    floors[order[:missing]] += 1
    return floors


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the n packed sequences in a given epoch; a new deterministic shuffle per epoch."""
    return np.random.default_rng([seed, EPOCH_STREAM, epoch]).permutation(n)
