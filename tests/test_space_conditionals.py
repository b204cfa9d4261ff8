"""The default search spaces: every task has one, and Optuna samples only valid combinations from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from raysearch.core.bundled import search_spaces_dir
from raysearch.search.space import SearchSpace, load_space
from raysearch.tasks import create_task, task_names
from raysearch.training.hparams import defaults, schema
from raysearch.training.optim import create_optimizer, create_scheduler

SPACES = search_spaces_dir()

TRIALS = 50
SCHEDULERS = {"none", "step", "cosine", "cosine_restarts", "plateau", "onecycle"}


def default_space(name: str) -> SearchSpace:
    return load_space(SPACES / f"{name}.yaml", schema=schema(create_task(name).hyperparameters))


def sampled(space: SearchSpace, trials: int = TRIALS) -> list[dict[str, Any]]:
    """The parameters Optuna's random sampler sets in each of `trials` define-by-run trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configurations = []
    for _ in range(trials):
        trial = study.ask()
        fixed = space.sample(trial)
        study.tell(trial, 0.0)
        configurations.append({**fixed, **trial.params})
    return configurations


@pytest.mark.parametrize("name", task_names())
def test_each_task_has_a_default_space_with_its_metric(name: str) -> None:
    space = default_space(name)
    assert space.task == name and space.metric == create_task(name).score and space.mode == create_task(name).mode
    names = set(space.names)
    knobs = {"optimizer", "lr", "weight_decay", "batch_size", "dropout", "scheduler", "warmup_epochs", "patience"}
    assert knobs <= names
    choices = {p.name: set(p.distribution.choices) for p in space.parameters if hasattr(p.distribution, "choices")}
    assert choices["optimizer"] == {"adam", "adamw", "sgd"} and choices["scheduler"] == SCHEDULERS


@pytest.mark.parametrize("name", task_names())
def test_parameters_are_sampled_exactly_when_their_conditions_hold(name: str) -> None:
    space = default_space(name)
    for config in sampled(space):
        for parameter in space.parameters:
            assert (parameter.name in config) == parameter.active(config), (parameter.name, config)
        assert ("step_size" in config) == (config["scheduler"] in ("step", "cosine_restarts"))
        assert ("gamma" in config) == (config["scheduler"] in ("step", "plateau"))
        assert ("plateau_patience" in config) == (config["scheduler"] == "plateau")
        assert ("warmup_epochs" in config) == (config["scheduler"] not in ("plateau", "onecycle"))
        assert ("momentum" in config) == (config["optimizer"] == "sgd")
        if "model" in config:
            for vgg_only in ("conv_layers", "pool_every", "width", "batch_norm"):
                assert (vgg_only in config) == (config["model"] == "vgg")
        if name == "multitask":
            assert ("loss_weight" in config) == (config["loss_weighting"] == "fixed")


@pytest.mark.parametrize("name", task_names())
def test_every_sampled_configuration_makes_its_optimizer_and_scheduler(name: str) -> None:
    space, hp = default_space(name), defaults(create_task(name).hyperparameters)
    configs = sampled(space)
    assert {c["scheduler"] for c in configs} == SCHEDULERS
    for config in configs:
        trial_hp = {**hp, **config}
        optimizer = create_optimizer([torch.nn.Parameter(torch.zeros(1))], trial_hp)
        scheduler = create_scheduler(optimizer, trial_hp, epochs=4, steps_per_epoch=3)
        assert optimizer.param_groups[0]["lr"] > 0 and scheduler is not None


def test_image_tasks_search_model_families_and_segmentation_its_encoders() -> None:
    for name in ("classification", "regression", "multitask"):
        models = {c["model"] for c in sampled(default_space(name))}
        assert "vgg" in models and {"resnet18", "efficientnet_b0", "mobilenetv2_100"} & models
    segmentation = sampled(default_space("segmentation"))
    assert {c["architecture"] for c in segmentation} == {"unet", "unetplusplus", "fpn"}
    assert {"dice_focal", "dice_bce"} <= {c["seg_loss"] for c in segmentation}
    assert all("model" not in c and "conv_layers" not in c for c in segmentation)


def _sampled_names(space: SearchSpace) -> set[str]:
    """The parameters Optuna saw in any trial (not the fixed values)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    names: set[str] = set()
    for _ in range(TRIALS):
        trial = study.ask()
        space.sample(trial)
        study.tell(trial, 0.0)
        names |= set(trial.params)
    return names


def test_a_fixed_value_satisfies_the_conditions_on_it_through_extends(tmp_path: Path) -> None:
    """Fixing `model: vgg` over the default classification space pins the family: the VGG shape is searched in
    every trial, the model never, and no parameter is dropped."""
    pinned = tmp_path / "vgg.yaml"
    pinned.write_text(f"extends: {SPACES / 'classification.yaml'}\nfixed: {{model: vgg}}\n")
    space = load_space(pinned, schema=schema(create_task("classification").hyperparameters))
    names = _sampled_names(space)
    assert {"conv_layers", "pool_every", "width", "batch_norm"} <= names and "model" not in names
    assert space.fixed["model"] == "vgg" and space.notes == ()
    vgg_shape = next(p for p in space.parameters if p.name == "conv_layers")
    assert dict(vgg_shape.when) == {}


def test_a_fixed_value_that_rules_a_parameter_out_drops_it_with_a_note(tmp_path: Path) -> None:
    pinned = tmp_path / "resnet.yaml"
    pinned.write_text(f"extends: {SPACES / 'classification.yaml'}\nfixed: {{model: resnet18, clahe: false}}\n")
    space = load_space(pinned, schema=schema(create_task("classification").hyperparameters))
    names = _sampled_names(space)
    assert not names & {"model", "conv_layers", "pool_every", "width", "batch_norm", "clahe", "clahe_clip"}
    assert "parameters.conv_layers: not searched (fixed model: 'resnet18' is not among ['vgg'])" in space.notes
    assert "parameters.clahe_clip: not searched (fixed clahe: False is not among [True])" in space.notes
