"""The image index (decode once, keyed by path, size and mtime), the OpenCV perceptual hash, and the indexed
near-duplicate search against the all-pairs one."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from raysearch.core.layout import image_index_file
from raysearch.data import imageindex, masklevels, records, sources
from raysearch.data.audit import audit_dataset
from raysearch.data.cache import dataset_fingerprint
from raysearch.data.imageindex import image_facts
from raysearch.data.images import read_grey
from raysearch.data.loading import load_dataset
from raysearch.data.samples import DatasetIndex, Sample
from raysearch.data.sources import known_near_pairs, near_pairs, segment_count
from raysearch.errors import DataError


def all_pairs(a: np.ndarray, b: np.ndarray, limit: int = 32) -> list[tuple[int, int, int]]:
    """The reference: every pair compared."""
    distance = np.bitwise_count(a[:, None, :] ^ b[None, :, :]).sum(axis=2)
    return [(int(i), int(j), int(distance[i, j])) for i, j in zip(*np.nonzero(distance <= limit), strict=True)]


def _told(facts: list[imageindex.ImageFacts]) -> list[tuple]:
    """Everything the index tells of each image, comparable."""
    return [(f.file_digest, None if f.pixels is None else (f.pixels.width, f.pixels.height, f.pixels.channels,
                                                          f.pixels.content, f.pixels.phash.tobytes()))
            for f in facts]


def _rewrite(path: Path, image: np.ndarray) -> None:
    """Write new pixels into an image file, its mtime a second later (whatever the file system's resolution)."""
    stamp = os.stat(path).st_mtime_ns
    cv2.imwrite(str(path), image)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "train" / "images"
    folder.mkdir(parents=True)
    paths = []
    for i in range(6):
        noise = cv2.resize(rng.random((8, 8)), (48, 40), interpolation=cv2.INTER_CUBIC)
        paths.append(folder / f"{i}.png")
        cv2.imwrite(str(paths[-1]), (noise.clip(0, 1) * 255).astype(np.uint8))
    (folder / "broken.png").write_bytes(b"not an image")
    return [*paths, folder / "broken.png"]


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every image the index decodes (a spy around the real decoder)."""
    seen: list[Path] = []
    real = imageindex.read_image

    def spy(path: Path) -> np.ndarray | None:
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(imageindex, "read_image", spy)
    return seen


def test_a_second_pass_over_unchanged_images_decodes_nothing_and_a_changed_image_is_decoded_again(
        images: list[Path], decodes: list[Path], tmp_path: Path) -> None:
    index = image_index_file(tmp_path / "results", tmp_path / "data")
    first = image_facts(images, index, progress=False)
    assert len(decodes) == len(images) and index.is_file()
    assert first[-1].pixels is None and first[0].pixels is not None
    assert (first[0].pixels.width, first[0].pixels.height, first[0].pixels.channels) == (48, 40, 1)
    decodes.clear()
    assert _told(image_facts(images, index, progress=False)) == _told(first)
    assert decodes == []
    changed = cv2.imread(str(images[2]), cv2.IMREAD_UNCHANGED)
    _rewrite(images[2], 255 - changed)
    again = image_facts(images, index, progress=False)
    assert decodes == [images[2]]
    assert again[2].file_digest != first[2].file_digest and again[2].pixels.content != first[2].pixels.content
    assert [f for i, f in enumerate(_told(again)) if i != 2] == [f for i, f in enumerate(_told(first)) if i != 2]


def test_the_fingerprint_reads_digests_from_the_index_and_follows_a_changed_file(
        images: list[Path], decodes: list[Path], tmp_path: Path) -> None:
    dataset = DatasetIndex(tmp_path / "data", "folders", ["a"], [Sample(p, "train", 0) for p in images[:-1]])
    index = image_index_file(tmp_path / "results", dataset.root)
    unindexed = dataset_fingerprint(dataset)
    assert dataset_fingerprint(dataset, index, progress=False) == unindexed
    decodes.clear()
    assert dataset_fingerprint(dataset, index, progress=False) == unindexed and decodes == []
    _rewrite(images[0], np.zeros((40, 48), np.uint8))
    assert dataset_fingerprint(dataset, index, progress=False) != unindexed and decodes == [images[0]]


@pytest.fixture
def headers(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file whose header a dataset scan opens (a spy around the real header reader the scan checks use)."""
    seen: list[Path] = []
    real = records.inspect_image

    def spy(path: Path) -> object:
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(records, "inspect_image", spy)
    return seen


def _class_folders(root: Path) -> Path:
    """Two class folders of three PNGs each, and a JPEG cut short (a problem the scan must list)."""
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(root / name / f"{i}.png"), (rng.random((40, 48)) * 255).astype(np.uint8))
    ok, jpeg = cv2.imencode(".jpg", np.full((40, 48), 90, np.uint8))
    (root / "b" / "cut.jpg").write_bytes(jpeg.tobytes()[:-100])
    return root


def _scan(data: Path, results: Path) -> DatasetIndex:
    return load_dataset(str(data), results=results, progress=False, out=io.StringIO())


def test_a_second_scan_opens_no_unchanged_image_and_a_changed_or_cut_image_is_checked_again(
        tmp_path: Path, headers: list[Path]) -> None:
    data, results = _class_folders(tmp_path / "data"), tmp_path / "results"
    first = _scan(data, results)
    assert len(first.samples) == 6 and [i.path.name for i in first.issues] == ["cut.jpg"]
    image_facts([s.image_path for s in first.samples], image_index_file(results, first.root), progress=False)
    headers.clear()
    second = _scan(data, results)
    assert headers == [data / "b" / "cut.jpg"]  # kept images are indexed; the run never indexes a problem file
    assert second.samples == first.samples and second.issues == first.issues
    headers.clear()
    changed, cut = data / "a" / "0.png", data / "b" / "1.png"
    _rewrite(changed, np.zeros((40, 48), np.uint8))
    cut.write_bytes(cut.read_bytes()[:-30])
    third = _scan(data, results)
    assert sorted(headers) == sorted([changed, cut, data / "b" / "cut.jpg"])
    assert sorted(i.path.name for i in third.issues) == ["1.png", "cut.jpg"] and len(third.samples) == 5
    assert "truncated image" in next(i.message for i in third.issues if i.path == cut)


def test_a_second_segmentation_scan_opens_and_decodes_no_unchanged_mask(
        tmp_path: Path, headers: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    data, results = tmp_path / "data", tmp_path / "results"
    for folder in ("images", "masks"):
        (data / folder).mkdir(parents=True)
    for i in range(4):
        cv2.imwrite(str(data / "images" / f"{i}.png"), (rng.random((40, 48)) * 255).astype(np.uint8))
        cv2.imwrite(str(data / "masks" / f"{i}.png"), np.kron(np.eye(2, dtype=np.uint8), np.ones((20, 24), np.uint8))
                    * (i + 1))  # mask 0 is 0/1; masks 1-3 are 0 and one level; all binary
    cv2.imwrite(str(data / "masks" / "3.png"), np.arange(40 * 48, dtype=np.uint8).reshape(40, 48) % 3)  # 0, 1, 2
    decoded: list[Path] = []
    real = masklevels.read_array
    monkeypatch.setattr(masklevels, "read_array", lambda path: decoded.append(Path(path)) or real(path))

    def scan() -> DatasetIndex:
        return load_dataset(str(data), results=results, binarise_masks=True, progress=False, out=io.StringIO())

    first = scan()
    assert len(first.samples) == 4 and len(decoded) == 4
    image_facts([s.image_path for s in first.samples], image_index_file(results, first.root), progress=False)
    headers.clear()
    decoded.clear()
    out = io.StringIO()
    second = load_dataset(str(data), results=results, binarise_masks=True, progress=False, out=out)
    assert headers == [] and decoded == []  # neither an image's nor a mask's header opened, no mask decoded
    assert second.samples == first.samples and "1 masks with values other than 0/1/255 binarised" in out.getvalue()
    with pytest.raises(DataError, match=r"3.png: mask values 0, 1, 2 are not 0/1/255"):
        load_dataset(str(data), results=results, progress=False, out=io.StringIO())  # the kept levels refuse it
    _rewrite(data / "masks" / "3.png", np.zeros((40, 48), np.uint8))
    decoded.clear()
    scan()
    assert decoded == [data / "masks" / "3.png"]


def test_a_second_audit_opens_no_file_and_finds_the_same_problems(tmp_path: Path, headers: list[Path]) -> None:
    data, results = _class_folders(tmp_path / "data"), tmp_path / "results"
    first = audit_dataset(data, results=results, progress=False)
    headers.clear()
    second = audit_dataset(data, results=results, progress=False)
    assert headers == []  # the audit indexes every file it scans, problem files too
    assert second.rows("issues") == first.rows("issues") and len(first.rows("issues")) == 1


@pytest.fixture(scope="module")
def real_hashes(real_dataset: Path) -> tuple[list[Path], np.ndarray]:
    paths = sorted(real_dataset.rglob("*.jpg"))
    facts = image_facts(paths, None, progress=False)
    return paths, np.stack([f.pixels.phash for f in facts])


def test_the_opencv_hash_is_imagehash_s_phash_bit_for_bit_on_the_real_set(
        real_hashes: tuple[list[Path], np.ndarray]) -> None:
    imagehash = pytest.importorskip("imagehash")
    from PIL import Image

    paths, hashes = real_hashes
    for path, ours in list(zip(paths, hashes, strict=True))[::3]:
        grey, _ = read_grey(path)  # the 8-bit grey the index hashes (raysearch.data.images)
        theirs = np.packbits(imagehash.phash(Image.fromarray(grey), hash_size=16).hash).view(np.uint64)
        assert np.array_equal(theirs, ours), path


def test_the_indexed_search_finds_the_all_pairs_pairs_on_the_real_set(
        real_hashes: tuple[list[Path], np.ndarray]) -> None:
    _, hashes = real_hashes
    expected = all_pairs(hashes, hashes)
    assert len(expected) > len(hashes) + 300  # the export's augmented copies are near-duplicates of each other
    assert near_pairs(hashes, hashes) == expected
    assert near_pairs(hashes[:500], hashes[500:]) == all_pairs(hashes[:500], hashes[500:])


def test_near_pairs_are_searched_once_per_set_of_hashes_and_again_when_one_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    hashes = np.packbits(rng.integers(0, 2, size=(300, 256), dtype=np.uint8), axis=1).view(np.uint64)
    hashes[150] = hashes[3] ^ np.uint64(0b111)  # a near-duplicate at 3 bits
    searches: list[int] = []
    real = sources.near_pairs
    monkeypatch.setattr(sources, "near_pairs", lambda a, b: searches.append(len(a)) or real(a, b))
    kept = tmp_path / "index.pairs.npz"
    expected = all_pairs(hashes, hashes)
    assert known_near_pairs(hashes, kept) == expected and searches == [300]
    assert known_near_pairs(hashes, kept) == expected and searches == [300]  # read back: no search
    changed = hashes.copy()
    changed[7] = changed[150]
    assert known_near_pairs(changed, kept) == all_pairs(changed, changed) and searches == [300, 300]
    kept.write_bytes(b"not numbers")
    assert known_near_pairs(changed, kept) == all_pairs(changed, changed) and searches == [300, 300, 300]


@pytest.mark.parametrize("segments", [None, 33, 17, 13])
def test_the_indexed_search_finds_every_planted_duplicate_at_every_distance(segments: int | None) -> None:
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2, size=(600, 256), dtype=np.uint8)
    for row, flips in enumerate(range(0, 40)):  # copies of rows 0-39 at 0 to 39 bits, in rows 300-339
        copy = bits[row].copy()
        copy[rng.choice(256, flips, replace=False)] ^= 1
        bits[300 + row] = copy
    hashes = np.packbits(bits, axis=1).view(np.uint64)
    expected = all_pairs(hashes, hashes)
    planted = {(row, 300 + row) for row in range(33)}
    assert planted <= {(i, j) for i, j, _ in expected}
    assert near_pairs(hashes, hashes, segments=segments) == expected
    assert near_pairs(hashes[:300], hashes[300:], segments=segments) == all_pairs(hashes[:300], hashes[300:])
    assert near_pairs(hashes[:0], hashes) == []


def test_a_large_search_takes_longer_pieces_and_still_finds_the_all_pairs_pairs() -> None:
    assert segment_count(4_000, 256) == 17 and segment_count(100_000, 256) == 13
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2, size=(60_000, 256), dtype=np.uint8)
    for row in range(40):  # copies of rows 0-39 at 0 to 39 bits among the 60,000
        bits[1_000 + 7 * row] = bits[row] ^ (rng.permutation(256) < row)
    hashes = np.packbits(bits, axis=1).view(np.uint64)
    assert segment_count(len(hashes), 256) == 13
    found = near_pairs(hashes[:200], hashes)
    assert found == all_pairs(hashes[:200], hashes)
    assert {(row, 1_000 + 7 * row) for row in range(33)} <= {(i, j) for i, j, _ in found}


def test_a_search_s_import_closure_has_no_scipy() -> None:
    """The GPU machine has no scipy: what `raysearch run` imports (CLI, study, search, trial, trainer, image
    index, audit, evaluate) must not need it."""
    modules = ["raysearch.cli", "raysearch.study.run", "raysearch.study.evaluate", "raysearch.search.tuner",
               "raysearch.search.trial", "raysearch.training.trainer", "raysearch.data.imageindex",
               "raysearch.data.audit"]
    probe = f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n" \
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'imagehash', 'pywt'}))"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


def test_hashes_with_no_pair_within_the_limit_give_no_pairs() -> None:
    far = np.array([[0, 0, 0, 0], [2**64 - 1] * 4], dtype=np.uint64)
    assert near_pairs(far[:1], far[1:]) == [] == all_pairs(far[:1], far[1:])
