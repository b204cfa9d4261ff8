"""What the console shows at 100 trials: in the default mode one line per trial result (epoch, score, ETA) and one
per trial end, none of Ray's, Tune's or Optuna's own output; in --verbose Tune's result boxes without per-class or
confusion lines; a summary table that fits 120 columns with whole numbers as whole numbers and only the parameters
that were sampled."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TinyStudy
from ray.tune.experiment import Trial
from ray.tune.experimental.output import BLACKLISTED_KEYS, _get_dict_as_table_data

from raysearch.core.bundled import search_spaces_dir
from raysearch.search.console import CONSOLE_METRICS, number_text
from raysearch.search.progress import TrialProgress, duration_text, end_line, failed_line, progress_line, study_line
from raysearch.search.results import error_summary
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


# What Ray, Tune and Optuna print on their own, which the default console leaves out.
LIBRARY_NOISE = ("Token authentication", "A new study created", "Configuration for experiment", "View detailed results",
                 "tensorboard --logdir", "Trial status", "started with configuration", "╭", "Current time:",
                 "Checkpoint successfully created", "Experiment state snapshotting", "pid=")


def test_a_progress_line_has_the_epoch_score_best_seconds_per_epoch_and_eta() -> None:
    result = {"epoch": 2.0, "val_score": 0.26666666, "trial_best": 0.3, "training_iteration": 2, "time_total_s": 42.4}
    line = progress_line("1c017a81", result, metric="val_score", max_epochs=6)
    assert line == "trial 1c017a81  epoch 2/6  val_score 0.2667 (best 0.3)  21 s/epoch  ETA 1m25s"  # 21.2 s x 4
    resumed = {**result, "epoch": 5, "training_iteration": 1, "time_total_s": 3.5}  # Tune's clock restarted
    assert progress_line("t", resumed, metric="val_score", max_epochs=6).endswith("3.5 s/epoch  ETA 4s")
    last = progress_line("t", {**result, "epoch": 6}, metric="val_loss", max_epochs=6)
    assert "ETA" not in last and "val_loss" not in last and last.endswith("21 s/epoch")


def test_whole_numbers_and_durations_print_whole() -> None:
    assert [number_text(v) for v in (4.0, np.float32(32.0), 0.123456, 3, "vgg")] == ["4", "32", "0.1235", "3", "vgg"]
    assert [duration_text(s) for s in (0.4, 59.6, 84, 3600 * 2 + 5 * 60 + 10)] == ["0s", "1m00s", "1m24s", "2h05m"]


def test_a_trial_s_end_says_how_it_ended() -> None:
    last = {"epoch": 2, "trial_best": 0.25, "stopped_early": 0.0}
    assert end_line("a", {**last, "epoch": 6}, metric="val_score", max_epochs=6) == \
        "trial a finished: best val_score 0.25"
    assert end_line("a", last, metric="val_score", max_epochs=6) == \
        "trial a stopped early by the scheduler at epoch 2/6: best val_score 0.25"
    assert end_line("a", {**last, "stopped_early": 1.0}, metric="val_score", max_epochs=6) == \
        "trial a stopped early at epoch 2/6 (no better val_score): best val_score 0.25"
    assert end_line("a", {}, metric="val_score", max_epochs=6) == "trial a ended before its first epoch"


def test_a_failed_trial_is_one_line_with_its_error_and_error_file() -> None:
    error_file = ("Failure # 1 (occurred at 2026-12-02_03-04-31)\nray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)\n"
                  "  File \"trial.py\", line 3, in run_trial\nValueError: loss is NaN at epoch 2\n\n")
    line = failed_line("a", error_summary(error_file), "/r/s/ray/s/a/error.txt")
    assert line == "trial a failed: ValueError: loss is NaN at epoch 2 (error file: /r/s/ray/s/a/error.txt)"
    assert failed_line("a", None, None, retried=True) == "trial a failed (Tune starts it again): no error recorded"


def test_the_callback_prints_each_result_each_end_and_the_study_s_counts(capsys: pytest.CaptureFixture[str]) -> None:
    trials = [Trial("run_trial", trial_id=f"t{i}", stub=True) for i in range(3)]
    for trial, status in zip(trials, (Trial.RUNNING, Trial.RUNNING, Trial.PENDING), strict=True):
        trial.set_status(status)
    progress = TrialProgress("val_score", max_epochs=2)
    progress.setup(total_num_samples=5)
    result = {"epoch": 1, "val_score": 0.5, "trial_best": 0.5, "training_iteration": 1, "time_total_s": 2.0}
    progress.on_trial_result(1, trials, trials[0], result)
    progress.on_trial_result(1, trials, trials[0], {**result, "finished_before_resume": True})
    trials[0].update_last_result({**result, "epoch": 2})
    progress.on_trial_complete(2, trials, trials[0])  # Tune marks it TERMINATED after the callbacks
    assert capsys.readouterr().out.splitlines() == [
        "trial t0  epoch 1/2  val_score 0.5 (best 0.5)  2 s/epoch  ETA 2s", "trial t0 finished: best val_score 0.5",
        "trials: 1 finished, 1 running, 1 waiting, 2 to sample"]
    assert study_line([Trial.TERMINATED, Trial.ERROR], None) == "trials: 2 finished, 0 running"


@pytest.mark.slow
def test_a_default_run_prints_a_line_per_epoch_and_none_of_ray_s_own(two_worker_study: TinyStudy) -> None:
    """The default console (neither --quiet nor --verbose) of a real 3-trial study on 2-worker trials under ASHA."""
    out = two_worker_study.stdout
    assert re.search(r"^trial \w+  epoch 1/2  val_score \S+ \(best \S+\)  [\d.]+ s/epoch  ETA (\d+m)?\d+s$", out,
                     re.M), out
    assert len(re.findall(r"^trial \w+ (finished|stopped early by the scheduler at epoch 1/2): best val_score", out,
                          re.M)) == 3, out
    assert re.search(r"^trials: 3 finished, 0 running$", out, re.M), out
    for noise in LIBRARY_NOISE:
        assert noise not in out + two_worker_study.stderr, noise
    assert "Best trials by" in out
