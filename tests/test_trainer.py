"""The trainer with hooks: fp32 results equal a plain PyTorch loop's, mixed precision runs on the CPU, steps are
counted without drawing the batches, batches come from the device (resident, streamed or memory-mapped) alike."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raysearch.data.cache import CachedDataset, dataset_fingerprint, ensure_cache, load_cache
from raysearch.data.device_data import BatchSource, placement_for, resident_limit
from raysearch.data.formats import load_dataset
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.errors import ConfigError
from raysearch.tasks import create_task
from raysearch.tasks.base import TaskContext
from raysearch.training.batches import make_batch, steps_per_epoch, train_batches
from raysearch.training.hparams import defaults, preprocessing_of
from raysearch.training.precision import resolve_precision
from raysearch.training.session import LocalSession
from raysearch.training.trainer import LoopSettings, Trainer, train
from raysearch.training.validation import baseline_apd, evaluate, measure_latency

CPU = torch.device("cpu")
SMALL = {"batch_size": 8, "conv_layers": 2, "width": 8, "image_size": 32}



@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> tuple[CachedDataset, dict[str, Any]]:
    root = write_phantom(tmp_path_factory.mktemp("phantom") / "data", PhantomSpec(20, 8, 4, image_size=32),
                         progress=False)
    index = load_dataset(root)
    hp = {**defaults(create_task("multitask").hyperparameters), **SMALL}
    directory, _ = ensure_cache(index, dataset_fingerprint(index), preprocessing_of(hp),
                                tmp_path_factory.mktemp("cache"), progress=False)
    return load_cache(directory), hp


def plain_loop(data: CachedDataset, hp: dict[str, Any], epochs: int, seed: int) -> list[dict[str, float]]:
    """Validation metrics per epoch of a straightforward fp32 PyTorch loop over the same batches."""
    torch.manual_seed(seed)
    task = create_task("multitask")
    train_rows, val_rows = task.usable(data, data.indices("train")), task.usable(data, data.indices("val"))
    context = TaskContext(len(data.classes), hp["channels"], baseline_apd(data, train_rows, val_rows))
    model = task.build_model(hp, context)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    history = []
    for epoch in range(epochs):
        model.train()
        losses = []
        for rows in train_batches(train_rows, hp, epoch, seed, 0, 1):
            batch = make_batch(data, rows, hp, CPU)
            loss = task.loss(model, model(batch["image"]), batch, hp, context)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        sums: dict[str, torch.Tensor] = {}
        samples: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for start in range(0, len(val_rows), hp["batch_size"]):
                batch = make_batch(data, val_rows[start : start + hp["batch_size"]], hp, CPU)
                output = model(batch["image"])
                for name, value in task.metric_sums(output, batch, context).items():
                    sums[name] = sums[name] + value if name in sums else value
                for name, value in task.metric_samples(output, batch, context).items():
                    samples.setdefault(name, []).append(value)
        gathered = {name: torch.cat(parts) for name, parts in samples.items()}
        history.append({"train_loss": float(np.mean(losses)),
                        **{f"val_{k}": v for k, v in task.summarise({**sums, **gathered}, context).items()}})
    return history


def test_fp32_metrics_equal_a_plain_pytorch_loop(cached: tuple[CachedDataset, dict[str, Any]]) -> None:
    data, hp = cached
    session = LocalSession()
    train(hp, LoopSettings("multitask", str(data.directory), max_epochs=2, seed=5), session)  # precision auto → fp32
    expected = plain_loop(data, hp, epochs=2, seed=5)
    assert [m["precision"] for m in session.history] == ["fp32", "fp32"]
    for got, want in zip(session.history, expected, strict=True):
        assert {k: got[k] for k in want if k.startswith("val_")} == {k: v for k, v in want.items() if k != "train_loss"}
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-12)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_the_cpu(cached: tuple[CachedDataset, dict[str, Any]], precision: str) -> None:
    data, hp = cached
    session = LocalSession()
    trainer = Trainer({**hp, "precision": precision}, LoopSettings("multitask", str(data.directory), 1, 0), session)
    trainer.setup()
    assert trainer.precision.scaler.is_enabled() == (precision == "fp16")
    with trainer.precision.autocast():
        assert trainer.model(torch.zeros(2, 1, 32, 32))["logits"].dtype == {"bf16": torch.bfloat16,
                                                                            "fp16": torch.float16}[precision]
    trainer.fit()
    assert session.history[0]["precision"] == precision
    assert np.isfinite(session.history[0]["train_loss"]) and np.isfinite(session.history[0]["val_score"])


def test_auto_precision_is_fp32_on_the_cpu_and_unknown_ones_are_refused() -> None:
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ConfigError, match="precision: must be one of auto, bf16, fp16, fp32, got 'fp8'"):
        resolve_precision("fp8", CPU)


@pytest.mark.parametrize("balance", ["none", "sampler"])
def test_steps_per_epoch_counts_what_train_batches_yields(balance: str) -> None:
    labels = np.arange(40) % 3
    assert steps_per_epoch(0, 8, 1) == 0
    for rows in (1, 2, 3, 7, 16, 17, 40):
        for batch_size in (1, 2, 3, 8, 64):
            for world in (1, 2, 3):
                hp = {"batch_size": batch_size, "class_balance": balance}
                drawn = sum(1 for _ in train_batches(np.arange(rows), hp, 0, 0, world - 1, world, labels[:rows]))
                assert steps_per_epoch(rows, batch_size, world) == drawn, (rows, batch_size, world)


def test_every_placement_gives_the_same_batches(cached: tuple[CachedDataset, dict[str, Any]]) -> None:
    """Resident (indexed on the device), streamed (prefetched by a thread) and memory-mapped batches are equal."""
    data, hp = cached
    assert placement_for(data, CPU) == "mapped" and resident_limit(CPU) == 0
    batches = list(train_batches(data.indices("train"), hp, 0, 0, 0, 1))
    sources = [BatchSource(data, CPU, preprocessing_of(hp), placement) for placement in ("mapped", "resident",
                                                                                          "streamed")]
    produced = [list(source.batches(batches)) for source in sources]
    assert len(produced[0]) == len(batches) > 1
    for other in produced[1:]:
        assert len(other) == len(batches)
        for a, b in zip(produced[0], other, strict=True):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.gpu
def test_on_a_gpu_the_cache_lives_there_and_a_trial_trains_in_the_default_precision(
        cached: tuple[CachedDataset, dict[str, Any]]) -> None:
    data, hp = cached
    session = LocalSession(torch.device("cuda", 0))
    trainer = Trainer({**hp, "augment": 0.5}, LoopSettings("multitask", str(data.directory), 2, 0), session)
    trainer.setup()
    assert trainer.source.placement == "resident" and trainer.source.arrays["image"].is_cuda
    assert trainer.memory_format == torch.channels_last and torch.backends.cudnn.benchmark
    trainer.fit()
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert [m["precision"] for m in session.history] == [expected, expected]
    assert all(np.isfinite(m["train_loss"]) and np.isfinite(m["val_score"]) for m in session.history)
    streamed = BatchSource(data, session.device, preprocessing_of(hp), "streamed")
    resident = trainer.source
    rows = list(train_batches(data.indices("train"), hp, 0, 0, 0, 1))
    for a, b in zip(streamed.batches(rows), resident.batches(rows), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


class _Sleeper(torch.nn.Module):
    """Takes 200 ms for each of its first two calls (a cold start), 10 ms after; records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(image.shape))
        time.sleep(0.2 if len(self.shapes) <= 2 else 0.01)
        return image


def test_latency_is_the_median_single_image_time_in_milliseconds_after_warm_up() -> None:
    model = _Sleeper()
    latency = measure_latency(model, (1, 8, 8), CPU)
    assert model.shapes == [(1, 1, 8, 8)] * 12 and not model.training  # 2 warm-up calls, then 10 timed, in eval
    assert 10 <= latency < 150


def test_each_epoch_reports_the_network_s_size_and_latency(cached: tuple[CachedDataset, dict[str, Any]]) -> None:
    data, hp = cached
    session = LocalSession()
    started = time.perf_counter()
    trainer = Trainer(hp, LoopSettings("multitask", str(data.directory), 1, 0, cache_hit=True), session)
    trainer.fit()
    took = time.perf_counter() - started
    (metrics,) = session.history
    assert metrics["params"] == sum(p.numel() for p in trainer.model.parameters()) > 0
    assert metrics["latency_ms"] == trainer.latency > 0 and metrics["cache_hit"] == 1.0
    assert metrics["lr"] == hp["lr"] and metrics["epoch"] == 1 and 0 < metrics["epoch_time_s"] < took


class _Worker(LocalSession):
    """One worker of a `world`-worker group (ranks 0..world-1) on the CPU."""

    def __init__(self, rank: int, world: int) -> None:
        super().__init__()
        self.world_rank, self.world_size = rank, world


def _frozen_network(hp: dict[str, Any], context: TaskContext) -> torch.nn.Module:
    torch.manual_seed(3)
    return create_task("multitask").build_model(hp, context)


def _validate_as_worker(rank: int, world: int, init: str, directory: str, hp: dict[str, Any],
                        context: TaskContext, cases: dict[str, np.ndarray], out: str) -> None:
    """Run `evaluate` over each case's rows as worker `rank` of a gloo group; save what this worker reports."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        data, network = load_cache(Path(directory)), _frozen_network(hp, context)
        found = {name: evaluate(create_task("multitask"), network, data, rows, hp, context, _Worker(rank, world))
                 for name, rows in cases.items()}
        torch.save(found, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_validation_sharded_over_two_workers_covers_every_image_once(
        cached: tuple[CachedDataset, dict[str, Any]], tmp_path: Path) -> None:
    """Each worker evaluates every second row and the sums are all-reduced: both workers report the metrics of
    one process evaluating all rows, also when a worker's shard is empty (one validation image)."""
    data, hp = cached
    hp = {**hp, "batch_size": 3}  # batches that straddle the shards
    val = data.indices("val")
    context = TaskContext(len(data.classes), hp["channels"], baseline_apd(data, data.indices("train"), val))
    cases = {"all": val, "one image": val[:1]}
    expected = {name: evaluate(create_task("multitask"), _frozen_network(hp, context), data, rows, hp, context,
                               LocalSession()) for name, rows in cases.items()}
    assert expected["all"] != expected["one image"]
    torch.multiprocessing.spawn(_validate_as_worker, nprocs=2, args=(
        2, f"file://{tmp_path / 'rendezvous'}", str(data.directory), hp, context, cases, str(tmp_path)))
    for rank in (0, 1):
        found = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, metrics in expected.items():
            assert found[name] == pytest.approx(metrics, rel=1e-5, abs=1e-6, nan_ok=True), (rank, name)


def test_validation_runs_in_the_trial_s_precision(cached: tuple[CachedDataset, dict[str, Any]]) -> None:
    data, hp = cached
    trainer = Trainer({**hp, "precision": "bf16"}, LoopSettings("multitask", str(data.directory), 1, 0), LocalSession())
    trainer.setup()
    found = trainer.validate()

    def evaluated(autocast: Any) -> dict[str, float]:
        return evaluate(trainer.task, trainer.model, data, trainer.val_rows, trainer.hp, trainer.context,
                        trainer.session, autocast=autocast)

    assert found == evaluated(torch.autocast("cpu", dtype=torch.bfloat16))
    assert found != evaluated(nullcontext())  # bf16 forward passes give other numbers than fp32 ones


def test_hyperparameters_from_before_augmentation_and_precision_existed_train_plainly_in_fp32(
        cached: tuple[CachedDataset, dict[str, Any]]) -> None:
    data, hp = cached
    older = {k: v for k, v in hp.items() if k not in ("augment", "precision")}  # a study saved before those fields
    trainer = Trainer(older, LoopSettings("multitask", str(data.directory), 1, 0), LocalSession())
    trainer.setup()
    assert trainer.augmentation is None and trainer.precision.name == "fp32"
