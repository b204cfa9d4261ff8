"""The preprocessing cache: one entry per (dataset, preprocessing), hits and misses as trials see them, one builder."""

from __future__ import annotations

import multiprocessing
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import optuna
import pytest

from raysearch.data.cache import cache_issues, dataset_fingerprint, ensure_cache, load_cache
from raysearch.data.formats import load_dataset
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.data.samples import DatasetIndex
from raysearch.errors import DataError
from raysearch.space import parse_space
from raysearch.tasks import create_task
from raysearch.training.hparams import defaults, preprocessing_of

SPACE = {
    "task": "multitask",
    "parameters": {
        "clahe": {"type": "categorical", "choices": [True, False]},
        "clahe_clip": {"type": "float", "low": 1.0, "high": 4.0, "when": {"clahe": True}},
        "filter": {"type": "categorical", "choices": ["none", "median", "bilateral"]},
        "resize": {"type": "categorical", "choices": ["stretch", "letterbox"]},
        "normalisation": {"type": "categorical", "choices": ["minus_one_one", "imagenet"]},
        "augment": {"type": "float", "low": 0.0, "high": 1.0},
    },
}


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> DatasetIndex:
    root = write_phantom(tmp_path_factory.mktemp("phantom") / "data", PhantomSpec(8, 4, 4, image_size=32),
                         progress=False)
    return load_dataset(root)


def _trial_cache(index: DatasetIndex, cache_root: Path, values: dict[str, object]) -> tuple[Path, bool]:
    """What run_trial does with a sampled configuration: defaults + sample → Preprocessing → ensure_cache."""
    hp_defaults = {**defaults(create_task("multitask").hyperparameters), "image_size": 32}
    space = parse_space(SPACE, source="test", known=set(hp_defaults))
    trial = optuna.trial.FixedTrial(values)
    config = {**space.sample(trial), **trial.params}  # what OptunaSearch hands Tune: fixed + sampled values
    return ensure_cache(index, dataset_fingerprint(index), preprocessing_of({**hp_defaults, **config}), cache_root,
                        progress=False)


def test_a_second_trial_with_the_same_preprocessing_hits_and_other_preprocessing_misses(
        index: DatasetIndex, tmp_path: Path) -> None:
    first = {"clahe": True, "clahe_clip": 3.0, "filter": "median", "resize": "stretch",
             "normalisation": "minus_one_one", "augment": 0.2}
    same_pixels = {**first, "normalisation": "imagenet", "augment": 0.9}  # applied per batch, not cached
    other = {**first, "clahe_clip": 1.5}
    built, hit = _trial_cache(index, tmp_path, first)
    assert not hit
    assert _trial_cache(index, tmp_path, first) == (built, True)
    assert _trial_cache(index, tmp_path, same_pixels) == (built, True)
    other_dir, hit = _trial_cache(index, tmp_path, other)
    assert not hit and other_dir != built
    no_clahe, hit = _trial_cache(index, tmp_path, {**first, "clahe": False})
    assert not hit and no_clahe not in (built, other_dir)
    assert not np.array_equal(load_cache(built).images, load_cache(no_clahe).images)


def test_trials_that_need_the_same_entry_at_once_build_it_once(index: DatasetIndex, tmp_path: Path) -> None:
    preprocessing = preprocessing_of({**defaults({}), "image_size": 32, "clahe": True})
    job = (index, dataset_fingerprint(index), preprocessing, tmp_path)
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        found = pool.starmap(partial(ensure_cache, progress=False), [job] * 3)
    assert len({directory for directory, _ in found}) == 1
    assert sorted(hit for _, hit in found) == [False, True, True]  # one builder; the others waited for it
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_images_that_fail_to_decode_are_left_out_and_listed(index: DatasetIndex, tmp_path: Path) -> None:
    root = Path(index.root)
    copy = tmp_path / "data"
    copy.mkdir()
    for path in root.rglob("*"):
        target = copy / path.relative_to(root)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(path.read_bytes())
    victim = sorted((copy / "train" / "images").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # header intact, pixels cut short
    damaged = load_dataset(copy)
    assert len(damaged.split("train")) == 8  # the reader only reads headers
    directory, _ = ensure_cache(damaged, dataset_fingerprint(damaged), preprocessing_of(
        {**defaults({}), "image_size": 32}), tmp_path / "cache", progress=False)
    assert [(i.path, i.message) for i in cache_issues(directory)] == [(victim, "unreadable or corrupt image")]
    assert len(load_cache(directory).indices("train")) == 7


def test_a_dataset_given_by_a_relative_path_caches_from_any_working_directory(
        index: DatasetIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(index.root)
    monkeypatch.chdir(root.parent)
    relative = load_dataset(Path(root.name))
    monkeypatch.chdir(tmp_path)  # a Ray trial runs in its own working directory
    directory, _ = ensure_cache(relative, dataset_fingerprint(relative), preprocessing_of(
        {**defaults({}), "image_size": 32, "resize": "stretch"}), tmp_path / "cache", progress=False)
    assert len(load_cache(directory).images) == len(relative.samples) and not cache_issues(directory)


def test_a_cache_of_nothing_is_refused(index: DatasetIndex, tmp_path: Path) -> None:
    gone = DatasetIndex(index.root, index.format, index.classes,
                        [replace(s, image_path=tmp_path / "missing.png") for s in index.samples])
    with pytest.raises(DataError, match="missing.png: unreadable or corrupt image; none of the 16 images"):
        ensure_cache(gone, dataset_fingerprint(index), preprocessing_of({**defaults({}), "image_size": 32}),
                     tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists() or not any(p.is_dir() for p in (tmp_path / "cache").iterdir())
