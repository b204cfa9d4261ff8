"""Split policies: which images a study trains, selects and tests on, so that no source leaks into its test figures.

- `published`: the dataset's own splits (the default for a dataset that ships them; `grouped` is the default
  for one the reader splits by `--split-ratios`). The validation and test
  images whose source is also in train are counted, and evaluation reports the test metrics on the whole
  test split and on its leak-free (clean) subset.
- `deduplicated`: the published splits minus every validation and test image whose source group (Roboflow
  `.rf.` stem, perceptual near-duplicate; `raysearch.data.sources`) has an image in train.
- `grouped`: every usable image pooled, grouped by source, and the groups split with the study's seed and
  `--split-ratios`, stratified by class, so that no group crosses a split.

A patient is part of a source: the images of one patient (a DICOM file's PatientID, else a label table's
`patient` or `group` column) share one group, so `grouped` never puts a patient in two splits and the
published split's clean test subset leaves out the test images of a patient seen in train.

A dataset without test images gets a seeded, group-aware, class-stratified test split carved from train
(`--split-ratios`' test share of train's groups) unless the study asks for none (`--no-test-split`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raysearch.data.images import ImageError, inspect_image, is_dicom
from raysearch.data.records import SplitRatios, split_folders
from raysearch.data.samples import SPLITS, DatasetIndex, Sample
from raysearch.data.sources import source_groups
from raysearch.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

PUBLISHED, GROUPED = "published", "grouped"
SPLIT_POLICIES: tuple[str, ...] = (PUBLISHED, "deduplicated", GROUPED)
EVALUATED = ("val", "test")
GROUPED_ABOVE = 0.2  # share of val + test images with a source in train above which `grouped` is recommended


@dataclass(frozen=True)
class SplitOutcome:
    """A dataset's samples under a split policy, and what the policy changed."""

    index: DatasetIndex
    policy: str
    published: dict[str, int]
    leaked: dict[str, int]
    removed: dict[str, int] = field(default_factory=dict)
    carved_test: int = 0
    no_test_split: bool = False
    rows: dict[str, list[Any]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Images per split under the policy."""
        return {split: len(self.index.split(split)) for split in SPLITS}

    def record(self) -> dict[str, Any]:
        """What study.yaml records under data.splits."""
        return {"policy": self.policy, "published": self.published, "images": self.counts(),
                "in_train_source": self.leaked, "removed": self.removed, "carved_test": self.carved_test,
                "test_split": not self.no_test_split}

    def describe(self) -> str:
        """What the policy did, for the terminal at the start of a run (never silent)."""
        counts = ", ".join(f"{s} {n}" for s, n in self.counts().items())
        leaked = ", ".join(f"{n} of {self.published[s]} {s}" for s, n in self.leaked.items())
        lines = [f"splits: {self.policy} ({counts}); published split: {leaked} images have a source or "
                 "near-duplicate in train"]
        if self.policy == PUBLISHED and any(self.leaked.values()):
            lines.append("  test metrics are reported on the whole test split and on its clean subset "
                         "(test_clean.*); --splits deduplicated or grouped selects on leak-free data too")
        if self.removed:
            lines.append("  removed from " + ", ".join(f"{s}: {n}" for s, n in self.removed.items()))
        if self.carved_test:
            lines.append(f"  the dataset ships no test split: {self.carved_test} train images carved into one "
                         "(seeded, whole source groups, stratified by class; --no-test-split to keep none)")
        if self.no_test_split and not self.counts()["test"]:
            lines.append("  no test split (--no-test-split): this study will report no test figure")
        return "\n".join(lines)

    def table(self) -> pa.Table:
        """One row per published image: its published split, its split under the policy ('' when removed), its
        source group and whether an image of that group is in train under the policy (the study's splits.parquet)."""
        import pyarrow as pa

        return pa.table({"image": pa.array(self.rows["image"], pa.string()),
                         "published_split": pa.array(self.rows["published_split"], pa.string()),
                         "split": pa.array(self.rows["split"], pa.string()),
                         "group": pa.array(self.rows["group"], pa.int64()),
                         "source_in_train": pa.array(self.rows["source_in_train"], pa.bool_())})


def check_policy(policy: str | None) -> str | None:
    """`policy` when it is a known split policy or None (the dataset's default); ConfigError naming the flag."""
    if policy is not None and policy not in SPLIT_POLICIES:
        raise ConfigError(f"--splits: must be one of {', '.join(SPLIT_POLICIES)}, got {policy!r}")
    return policy


def default_policy(index: DatasetIndex) -> str:
    """`published` for a dataset that ships its splits (a YOLO data.yaml, split folders), else `grouped`: the
    reader's split by --split-ratios is per image, so copies of one source could land in two splits."""
    return PUBLISHED if index.format == "yolo" or index.ships_splits or split_folders(index.root) else GROUPED


def patients_of(samples: list[Sample]) -> list[str | None]:
    """Each sample's patient: a DICOM file's PatientID, else the label table's, else None."""
    def patient(sample: Sample) -> str | None:
        if not is_dicom(sample.image_path):
            return sample.patient
        try:
            return inspect_image(sample.image_path).patient or sample.patient
        except ImageError:
            return sample.patient

    return [patient(s) for s in samples]


def join_patients(groups: np.ndarray, patients: list[str | None]) -> np.ndarray:
    """Source groups merged so that the images of one patient share one group (the smallest id of those merged)."""
    parent: dict[int, int] = {}

    def root(group: int) -> int:
        while parent.get(group, group) != group:
            group = parent[group]
        return group

    first: dict[str, int] = {}
    for group, patient in zip(groups.tolist(), patients, strict=True):
        if patient is not None:
            a, b = root(group), root(first.setdefault(patient, group))
            parent[max(a, b)] = min(a, b)
    return np.array([root(g) for g in groups.tolist()], dtype=np.int64)


def in_train_source(splits: list[str], groups: np.ndarray) -> np.ndarray:
    """Per image: whether it lies outside train while an image of its source group lies in train."""
    in_train = {int(g) for s, g in zip(splits, groups, strict=True) if s == "train"}
    return np.array([s != "train" and int(g) in in_train for s, g in zip(splits, groups, strict=True)], dtype=bool)


def recommend_policy(leaked: int, evaluated: int) -> str:
    """The policy for a dataset whose `leaked` of `evaluated` validation and test images have a source in train."""
    if not leaked:
        return PUBLISHED
    return GROUPED if leaked > GROUPED_ABOVE * evaluated else "deduplicated"


def _group_class(samples: list[Sample], members: list[int]) -> int:
    """The most common class of a group (-1 for unlabelled samples), the stratum of its split."""
    counts = Counter(-1 if samples[i].class_id is None else samples[i].class_id for i in members)
    return min(counts, key=lambda c: (-counts[c], c))


def split_groups(samples: list[Sample], groups: np.ndarray, ratios: SplitRatios,
                 rng: np.random.Generator) -> list[str]:
    """A split name per sample: whole source groups assigned in `ratios`' shares, stratified by class."""
    members: dict[int, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[int(group)].append(i)
    strata: dict[int, list[int]] = defaultdict(list)
    for group, indices in members.items():
        strata[_group_class(samples, indices)].append(group)
    assigned = [""] * len(samples)
    for stratum in sorted(strata):
        chosen = strata[stratum]
        for group, split in zip(chosen, ratios.assign(len(chosen), rng), strict=True):
            for i in members[group]:
                assigned[i] = split
    return assigned


def apply_split_policy(index: DatasetIndex, policy: str | None, *, ratios: SplitRatios, seed: int,
                       test_split: bool = True, groups: np.ndarray | None = None, index_file: Path | None = None,
                       progress: bool = True) -> SplitOutcome:
    """The samples of `index` under `policy` (None: `default_policy`; see module docstring); `groups`
    (`sources.source_groups` of the samples' images) are found from their hashes (the image index `index_file`)
    unless given, then joined by patient (`join_patients`)."""
    policy = check_policy(policy) or default_policy(index)
    samples = index.samples
    published = [s.split for s in samples]
    if groups is None:
        groups = source_groups([s.image_path for s in samples], index_file=index_file, progress=progress)
    groups = join_patients(groups, patients_of(samples))
    leaked_mask = in_train_source(published, groups)
    rng = np.random.default_rng(seed)
    if policy == GROUPED:
        splits = split_groups(samples, groups, ratios, rng)
    elif policy == "deduplicated":
        splits = ["" if leak else s for s, leak in zip(published, leaked_mask, strict=True)]
    else:
        splits = list(published)
    carved = 0
    if test_split and "test" not in splits:
        train = [i for i, s in enumerate(splits) if s == "train"]
        share = ratios.test or SplitRatios().test
        carve = SplitRatios(train=1 - share, val=0.0, test=share)
        for i, split in zip(train, split_groups([samples[i] for i in train], groups[train], carve, rng), strict=True):
            splits[i] = split
        carved = splits.count("test")
    kept = [replace(s, split=split) for s, split in zip(samples, splits, strict=True) if split]
    rows = {"image": [str(s.image_path) for s in samples], "published_split": published, "split": splits,
            "group": groups.tolist(), "source_in_train": in_train_source(splits, groups).tolist()}
    removed = Counter(p for p, s in zip(published, splits, strict=True) if not s)
    return SplitOutcome(
        index=replace(index, samples=kept, split_policy=policy), policy=policy,
        published={s: published.count(s) for s in SPLITS},
        leaked={s: int(leaked_mask[[p == s for p in published]].sum()) for s in EVALUATED},
        removed={s: removed[s] for s in EVALUATED if removed[s]}, carved_test=carved, no_test_split=not test_split,
        rows=rows)
