"""What the console shows at 100 trials: Tune's result boxes without per-class or confusion lines, and a summary
table that fits 120 columns with whole numbers as whole numbers and only the parameters that were sampled."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TinyStudy
from ray.tune.experimental.output import BLACKLISTED_KEYS, _get_dict_as_table_data

from raysearch.core.bundled import search_spaces_dir
from raysearch.search.console import CONSOLE_METRICS
from raysearch.search.space import load_space
from raysearch.study.run import SUMMARY_WIDTH, summary_table
from raysearch.tasks import create_task
from raysearch.tasks.metrics import class_details, classification_summary
from raysearch.training.hparams import schema


def test_a_seven_class_trial_s_result_box_has_no_confusion_or_per_class_lines() -> None:
    confusion = torch.randint(0, 9, (7, 7))
    metrics = {"score": 0.5, "loss": 1.2, **classification_summary(confusion), **class_details(confusion)}
    result = {f"val_{k}": v for k, v in metrics.items()} | {"train_loss": 1.1, "epoch": 3, "training_iteration": 3,
                                                           "time_total_s": 12.5, "pid": 4, "checkpoint_path": "/x"}
    shown = dict(_get_dict_as_table_data(result, include=CONSOLE_METRICS, exclude=BLACKLISTED_KEYS))
    assert not [key for key in shown if "confusion" in key or "precision_" in key or "recall_" in key]
    assert {"val_score", "val_loss", "train_loss", "val_accuracy", "epoch"} <= set(shown)
    assert len(shown) < 15 and CONSOLE_METRICS.shown(result) == {k: result[k] for k in shown}


def test_the_summary_of_a_hundred_trials_fits_120_columns_with_whole_numbers_whole() -> None:
    space = load_space(search_spaces_dir() / "classification.yaml",
                       schema=schema(create_task("classification").hyperparameters))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(100):
        vgg = i % 2 == 0
        rows.append({"trial_id": f"t{i:03d}", "status": "TERMINATED", "epochs": 6,
                     "metric.val_score.best": rng.random(), "metric.val_accuracy.best": rng.random(),
                     "metric.val_macro_f1.best": rng.random(), "metric.val_loss.best": rng.random(),
                     "param.model": "vgg" if vgg else "resnet18",
                     "param.conv_layers": 4.0 if vgg else np.nan, "param.lr": 10 ** -rng.uniform(2, 4),
                     "param.momentum": np.nan, "param.batch_size": 32.0, "param.optimizer": "adam"})
    text = summary_table(pd.DataFrame(rows), space, "val_score", "max")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= SUMMARY_WIDTH
    header = lines[0].split()
    assert "momentum" not in header  # no trial sampled it
    assert header[:4] == ["trial_id", "status", "epochs", "val_score"]
    assert "4.0" not in text and "32.0" not in text
    assert " 4 " in text or "more columns in trials.parquet" in text


@pytest.mark.slow
def test_a_quiet_run_prints_raysearch_s_lines_only(tiny_study: TinyStudy) -> None:
    """`--quiet` (what `raysearch.run(progress=False)` does): no Tune status or result boxes, no worker output."""
    for ray_line in ("Trial status", "View detailed results", "Configuration for experiment", " result", "pid=", "╭",
                     "Current time:", "tensorboard --logdir"):
        assert ray_line not in tiny_study.stdout, ray_line
    assert "Best trials by" in tiny_study.stdout
