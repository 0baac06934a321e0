"""Bin packing of whole samples into sequences of `capacity` tokens. No sample is ever split or cut here.

Both algorithms place the longest samples first. Best fit puts each sample in the fullest sequence it
still fits in; first fit decreasing in the oldest one. Both are deterministic (stable sort, fixed
tie-breaking), so the same lengths always give the same packs.
"""

from __future__ import annotations

import bisect

import numpy as np

PACKER_VERSION = 1  # bump when the packs change for the same input: it is part of the cache key


def pack(sizes: np.ndarray, capacity: int, algorithm: str = "best_fit") -> tuple[np.ndarray, np.ndarray]:
    """Assign items (by size) to bins. Returns (offsets [n_bins+1], items [n]) in CSR form.

    Items of bin b are items[offsets[b]:offsets[b+1]], in the order they were placed.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if len(sizes) and (sizes.max() > capacity or sizes.min() <= 0):
        raise ValueError(f"item sizes must be in [1, {capacity}], got [{sizes.min()}, {sizes.max()}]")
    order = np.argsort(-sizes, kind="stable")
    fn = {"best_fit": _best_fit, "first_fit_decreasing": _first_fit}[algorithm]
    bin_of = fn(sizes[order].tolist(), capacity)
    # Group by bin, keeping placement order inside each bin.
    regroup = np.argsort(bin_of, kind="stable")
    items = order[regroup]
    counts = np.bincount(bin_of, minlength=int(bin_of.max()) + 1 if len(bin_of) else 0)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, items.astype(np.int64)


def _best_fit(sizes: list[int], capacity: int) -> np.ndarray:
    # Bins that still have room, grouped by remaining room: the candidates for an item of size s are
    # the smallest remaining >= s, found by bisection over the (at most `capacity`) distinct values.
    rooms: list[int] = []
    bins_with_room: dict[int, list[int]] = {}
    bin_of = np.empty(len(sizes), dtype=np.int64)
    n_bins = 0
    for k, s in enumerate(sizes):
        j = bisect.bisect_left(rooms, s)
        if j == len(rooms):
            b, left = n_bins, capacity - s
            n_bins += 1
        else:
            room = rooms[j]
            stack = bins_with_room[room]
            b = stack.pop()
            if not stack:
                del bins_with_room[room]
                rooms.pop(j)
            left = room - s
        bin_of[k] = b
        if left > 0:
            if left not in bins_with_room:
                bins_with_room[left] = []
                bisect.insort(rooms, left)
            bins_with_room[left].append(b)
    return bin_of


def _first_fit(sizes: list[int], capacity: int) -> np.ndarray:
    # A max segment tree over bins (unused bins have full room), descended to the leftmost bin that fits.
    n = max(1, len(sizes))
    leaves = 1 << (n - 1).bit_length()
    tree = [capacity] * (2 * leaves)
    bin_of = np.empty(len(sizes), dtype=np.int64)
    for k, s in enumerate(sizes):
        node = 1
        while node < leaves:
            node = 2 * node if tree[2 * node] >= s else 2 * node + 1
        bin_of[k] = node - leaves
        tree[node] -= s
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return bin_of


def padded_sizes(lengths: np.ndarray, multiple: int) -> np.ndarray:
    """Sample lengths rounded up to `multiple` (2*CP under context parallelism, else 1)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return (lengths + multiple - 1) // multiple * multiple


def fill(lengths: np.ndarray, n_bins: int, capacity: int) -> float:
    """Fraction of the packed tokens that are real sample tokens (not padding)."""
    return float(np.sum(lengths)) / (n_bins * capacity) if n_bins else 0.0


def greedy_concat_bins(lengths: np.ndarray, capacity: int) -> int:
    """Bins used by plain in-order concatenation that starts a new sequence when the next sample
    does not fit (the baseline the benchmark compares against)."""
    bins, room = 0, 0
    for n in np.asarray(lengths).tolist():
        if n > room:
            bins, room = bins + 1, capacity
        room -= n
    return bins
