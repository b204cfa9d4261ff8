"""Training batches drawn where the trial computes: the cache on the GPU, or memory-mapped on the CPU.

A trial on a GPU copies the cache's arrays onto the GPU once when they take at most `RESIDENT_SHARE` of the
GPU's free memory (measured with `torch.cuda.mem_get_info` when the trial starts; the rest is left to the
network's activations and to the other trials sharing the GPU), and draws every batch by indexing there.
A cache too big for that is streamed: a background thread gathers the next batch's rows from the
memory-mapped arrays into pinned memory, and its copy to the GPU runs on a side stream while the current
step computes. On the CPU the arrays stay memory-mapped (every trial on a machine shares their pages).

Augmentation and normalisation run on the batch's device, after the uint8 pixels got there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch

from raysearch.data.augment import Augmentation
from raysearch.data.cache import CachedDataset
from raysearch.data.preprocess import Preprocessing, normalise

Batch = dict[str, torch.Tensor]
DataPlacement = Literal["resident", "streamed", "mapped"]
RESIDENT_SHARE = 0.25
ARRAYS = {"image": "images", "mask": "masks", "label": "labels", "polygon": "polygons"}
COPY_CHUNK_ROWS = 1024


def cache_bytes(data: CachedDataset) -> int:
    """The size of the arrays a batch is drawn from."""
    return sum(getattr(data, name).nbytes for name in ARRAYS.values())


def resident_limit(device: torch.device) -> int:
    """The most bytes of cache a trial keeps on `device`: RESIDENT_SHARE of the GPU's free memory (0 on a CPU)."""
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * RESIDENT_SHARE)


def placement_for(data: CachedDataset, device: torch.device) -> DataPlacement:
    """Resident on a GPU it fits on, streamed to a GPU it does not fit on, memory-mapped on the CPU."""
    if device.type == "cpu":
        return "mapped"
    return "resident" if cache_bytes(data) <= resident_limit(device) else "streamed"


def _host_rows(data: CachedDataset, rows: np.ndarray, pin: bool) -> Batch:
    """The uint8 pixels, labels and polygons (NaN where absent) of sorted `rows`, as CPU tensors."""
    found = {key: torch.from_numpy(np.ascontiguousarray(getattr(data, name)[rows])) for key, name in ARRAYS.items()}
    return {key: tensor.pin_memory() for key, tensor in found.items()} if pin else found


def finish_batch(raw: Batch, preprocessing: Preprocessing, augmentation: Augmentation | None) -> Batch:
    """Augment (if asked) and normalise a batch on its own device: images (N, C, H, W), masks (N, 1, H, W)."""
    images, masks, polygons = raw["image"], raw["mask"], raw["polygon"]
    if augmentation is not None:
        images, masks, polygons = augmentation(images, masks, polygons)
    return {"image": normalise(images, preprocessing), "label": raw["label"], "polygon": polygons.nan_to_num(),
            "mask": masks.unsqueeze(1).float()}


class BatchSource:
    """A trial's batches from one cache, on `device`, placed as `placement_for` decides (or as `placement` says)."""

    def __init__(self, data: CachedDataset, device: torch.device, preprocessing: Preprocessing,
                 placement: DataPlacement | None = None) -> None:
        self.data, self.device, self.preprocessing = data, device, preprocessing
        self.placement = placement or placement_for(data, device)
        self.arrays: Batch = {}
        if self.placement == "resident":
            self.arrays = {key: self._to_device(getattr(data, name)) for key, name in ARRAYS.items()}

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """One array copied onto the device in chunks (never a second whole copy in host memory)."""
        out = None
        for start in range(0, max(len(array), 1), COPY_CHUNK_ROWS):
            chunk = torch.from_numpy(np.array(array[start : start + COPY_CHUNK_ROWS]))
            if out is None:
                out = torch.empty((len(array), *chunk.shape[1:]), dtype=chunk.dtype, device=self.device)
            out[start : start + len(chunk)].copy_(chunk)
        return out

    def raw(self, rows: np.ndarray) -> Batch:
        """The uint8 batch of `rows` (sorted: memory-mapped reads go in file order) on the device."""
        return next(self._raw([rows]))

    def _raw(self, batches: Iterable[np.ndarray]) -> Iterator[Batch]:
        """Raw batches in order. Resident ones are indexed on the device with one copy of all the batches' row
        numbers (a copy per step from pageable memory would make the host wait for the GPU every step)."""
        batches = [np.sort(rows) for rows in batches]
        if self.placement == "resident" and batches:
            order = torch.from_numpy(np.concatenate(batches)).to(self.device)
            for index in order.split([len(rows) for rows in batches]):
                yield {key: array.index_select(0, index) for key, array in self.arrays.items()}
        elif self.placement == "streamed":
            yield from self._prefetched(batches)
        else:
            for rows in batches:
                yield {key: t.to(self.device) for key, t in _host_rows(self.data, rows, False).items()}

    def batch(self, rows: np.ndarray, augmentation: Augmentation | None = None) -> Batch:
        """The finished batch of `rows`: augmented when given an augmentation, normalised."""
        return finish_batch(self.raw(rows), self.preprocessing, augmentation)

    def batches(self, batches: Iterable[np.ndarray], augmentation: Augmentation | None = None) -> Iterator[Batch]:
        """Finished batches in order (streamed ones gathered and copied one batch ahead, see the module)."""
        return (finish_batch(raw, self.preprocessing, augmentation) for raw in self._raw(batches))

    def _prefetched(self, batches: list[np.ndarray]) -> Iterator[Batch]:
        """Raw batches on the device: while step k runs, a thread gathers batch k + 1's rows into pinned memory,
        and batch k's copy to the GPU ran on a side stream while the GPU still computed step k - 1."""
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="raysearch-prefetch") as pool:
            gathering: Future[Batch] | None = None
            for rows in batches:
                current = None if gathering is None else self._copy(gathering.result(), stream)
                gathering = pool.submit(_host_rows, self.data, rows, cuda)
                if current is not None:
                    yield self._ready(current, stream)
            if gathering is not None:
                yield self._ready(self._copy(gathering.result(), stream), stream)

    def _copy(self, host: Batch, stream: torch.cuda.Stream | None) -> Batch:
        """Start copying a pinned host batch to the device on the side stream (asynchronous)."""
        if stream is None:
            return host
        with torch.cuda.stream(stream):
            return {key: t.to(self.device, non_blocking=True) for key, t in host.items()}

    def _ready(self, batch: Batch, stream: torch.cuda.Stream | None) -> Batch:
        """Make the compute stream wait for a batch's copy (on the GPU, not the host) before it is used."""
        if stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(stream)
            for tensor in batch.values():
                tensor.record_stream(current)
        return batch
