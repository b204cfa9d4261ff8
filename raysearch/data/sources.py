"""Which images come from the same source radiograph: Roboflow `.rf.` file-name stems and perceptual near-duplicates.

One definition, used by the audit (`raysearch data audit`) and by the split policies (`raysearch run --splits`).

Near-duplicates: a 256-bit DCT perceptual hash (imagehash.phash's, hash_size 16, computed with OpenCV in
`raysearch.data.imageindex`) within `NEAR_DUPLICATE_BITS` bits, found by multi-index hashing (`near_pairs`).
On the bone-fracture export, Roboflow's augmented copies of one source image lie 0-30 bits apart, while no
two different radiographs come closer than 40 bits. Roboflow names every exported copy
`<source>_<ext>.rf.<hash>.<ext>`: the part before `.rf.` names the source image.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from itertools import combinations
from math import ceil, comb
from pathlib import Path

import numpy as np

from raysearch.core.files import atomic_file
from raysearch.core.layout import near_pairs_file

NEAR_DUPLICATE_BITS = 32
MAX_SEGMENT_BITS = 20  # near_pairs counts the rows per piece value in an array of 2 ** bits: 8 MB stays in cache
CANDIDATE_COST = 30  # a candidate pair (gathered, sorted, compared whole) costs ~30 probes (measured, random hashes)
ROBOFLOW_MARK = ".rf."


def _bits(hashes: np.ndarray) -> np.ndarray:
    """The hashes' bits, one column each."""
    return np.unpackbits(np.ascontiguousarray(hashes).view(np.uint8), axis=1)


def _pieces(bits: np.ndarray, segments: int) -> list[np.ndarray]:
    """The bit columns of each piece: dealt out in turn from the most even bit (set in half the rows) to the most
    constant, so that every piece mixes informative bits. Perceptual hashes have near-constant bits (the DCT's
    lowest frequencies); contiguous pieces of them would put most rows under a few piece values."""
    evenness = np.abs(bits.mean(axis=0) - 0.5) if len(bits) else np.zeros(bits.shape[1])
    order = np.argsort(evenness, kind="stable")
    return [np.sort(order[k::segments]) for k in range(segments)]


def _piece_keys(bits: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Each row's bits of `columns` as an integer."""
    return bits[:, columns].astype(np.int64) @ (1 << np.arange(len(columns) - 1, -1, -1, dtype=np.int64))


def _flips(width: int, radius: int) -> np.ndarray:
    """Every mask of `width` bits with at most `radius` bits set."""
    return np.array([sum(1 << b for b in chosen) for r in range(radius + 1)
                     for chosen in combinations(range(width), r)], dtype=np.int64)


def segment_count(rows: int, width: int, limit: int = NEAR_DUPLICATE_BITS) -> int:
    """The number of pieces for `near_pairs` over `rows` hashes of `width` bits that costs least per searched hash:
    probes (pieces × flip masks) plus the candidates they find, `rows` / 2 ** piece bits each for spread hashes.
    Few rows: short pieces, one flipped bit (17 pieces of 256 bits); from ~40,000 rows longer pieces with two
    flipped bits (13), so the candidates stay a small share of the pairs as the data grows."""
    def cost(pieces: int) -> float:
        flips = sum(comb(ceil(width / pieces), k) for k in range(limit // pieces + 1))
        return pieces * flips * (1 + CANDIDATE_COST * rows / 2 ** (width // pieces))

    return min((p for p in range(2, limit + 2) if ceil(width / p) <= MAX_SEGMENT_BITS), key=cost)


def near_pairs(a: np.ndarray, b: np.ndarray, limit: int = NEAR_DUPLICATE_BITS,
               segments: int | None = None) -> list[tuple[int, int, int]]:
    """(i, j, distance), ordered by (i, j), for every hash a[i], b[j] (rows of packed uint64 bits) within
    `limit` bits: the all-pairs answer, found by multi-index hashing instead of comparing every pair.

    The bits are dealt into `segments` pieces (`_pieces`; default: `segment_count`'s cheapest for len(b)): two
    hashes within `limit` bits differ in at most limit // segments bits of some piece (pigeonhole), so every pair
    is found among the b rows whose piece lies within that radius of a row's piece (looked up per flip mask in the
    b rows grouped by piece value); only those candidates are compared whole."""
    if len(a) == 0 or len(b) == 0:
        return []
    width = a.shape[1] * 64
    segments = segments or segment_count(len(b), width, limit)
    if ceil(width / segments) > MAX_SEGMENT_BITS:
        raise ValueError(f"near_pairs: {segments} segments of {width} bits are wider than {MAX_SEGMENT_BITS} bits")
    radius = limit // segments
    bits_a, bits_b = _bits(a), _bits(b)
    found = []
    for columns in _pieces(bits_b, segments):
        keys_a, keys_b = _piece_keys(bits_a, columns), _piece_keys(bits_b, columns)
        order = np.argsort(keys_b, kind="stable")
        sizes = np.bincount(keys_b, minlength=1 << len(columns))  # b rows per piece value
        starts = np.cumsum(sizes) - sizes  # where each value's rows begin in `order`
        for flip in _flips(len(columns), radius):
            probe = keys_a ^ flip
            counts, first = sizes[probe], starts[probe]
            i = np.repeat(np.arange(len(a)), counts)
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            j = order[np.repeat(first, counts) + offsets]
            distance = np.bitwise_count(a[i] ^ b[j]).sum(axis=1)  # compared whole at once: few stay
            close = distance <= limit
            found.append((i[close] * len(b) + j[close], distance[close]))
    codes, distances = (np.concatenate(parts) for parts in zip(*found, strict=True))
    pairs, first = np.unique(codes, return_index=True)  # a pair near in several pieces is found once per piece
    return [(int(p // len(b)), int(p % len(b)), int(d)) for p, d in zip(pairs, distances[first], strict=True)]


def roboflow_source(path: Path | str) -> str | None:
    """The source image a Roboflow export copy was made from (`xray_jpg.rf.1a2b.jpg` → `xray_jpg`), else None."""
    name = os.path.basename(path)
    return name.split(ROBOFLOW_MARK, 1)[0] if ROBOFLOW_MARK in name else None


def known_near_pairs(hashes: np.ndarray, pairs_file: Path | None) -> list[tuple[int, int, int]]:
    """`near_pairs(hashes, hashes)`, kept in `pairs_file` (`layout.near_pairs_file`) with the digest of the hashes
    it was found for and read back while they are the same, so a second start on unchanged data searches nothing.
    A file that cannot be read is searched again (it holds numbers only: nothing in it is executed)."""
    digest = np.frombuffer(hashlib.blake2b(np.ascontiguousarray(hashes).tobytes(), digest_size=16).digest(),
                           dtype=np.uint8)
    if pairs_file is not None and pairs_file.is_file():
        try:
            with np.load(pairs_file, allow_pickle=False) as kept:
                if np.array_equal(kept["digest"], digest):
                    return [(int(i), int(j), int(d)) for i, j, d in kept["pairs"]]
        except (OSError, ValueError, KeyError):
            pass
    pairs = near_pairs(hashes, hashes)
    if pairs_file is not None:
        with atomic_file(pairs_file) as staging, open(staging, "wb") as handle:
            np.savez(handle, digest=digest, pairs=np.array(pairs, dtype=np.int64).reshape(-1, 3))
    return pairs


def group_sources(paths: Sequence[Path | str], hashes: Sequence[np.ndarray | None],
                  pairs_file: Path | None = None) -> np.ndarray:
    """A source-group id per image: images sharing a Roboflow source stem or lying within the near-duplicate
    distance of each other (transitively) share a group; an id is the smallest index in its group. The pairs are
    kept in `pairs_file` (`known_near_pairs`; None: searched every time)."""
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        a, b = root(i), root(j)
        parent[max(a, b)] = min(a, b)

    first_of: dict[str, int] = {}
    for i, path in enumerate(paths):
        stem = roboflow_source(path)
        if stem is not None:
            join(first_of.setdefault(stem, i), i)
    decoded = [i for i, h in enumerate(hashes) if h is not None]
    if decoded:
        stacked = np.stack([hashes[i] for i in decoded])
        for i, j, _ in known_near_pairs(stacked, pairs_file):
            if i < j:
                join(decoded[i], decoded[j])
    return np.array([root(i) for i in range(len(paths))], dtype=np.int64)


def source_groups(paths: Sequence[Path | str], *, index_file: Path | None = None,
                  progress: bool = True) -> np.ndarray:
    """Group images by source (`group_sources`), their hashes read from the dataset's image index `index_file`
    (`raysearch.data.imageindex`; images new or changed since are decoded, with a progress bar)."""
    from raysearch.data.imageindex import image_facts

    facts = image_facts(paths, index_file, progress=progress, desc="splits: hash images by source")
    pairs_file = None if index_file is None else near_pairs_file(index_file)
    return group_sources(paths, [f.pixels and f.pixels.phash for f in facts], pairs_file)
