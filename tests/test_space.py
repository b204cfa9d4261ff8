"""Search-space parsing: the shipped spaces are valid; invalid files are refused naming the key."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from raysearch.core.bundled import search_spaces_dir
from raysearch.errors import ConfigError
from raysearch.search.space import load_space, parse_space
from raysearch.tasks import create_task
from raysearch.training.hparams import schema

SPACES = search_spaces_dir()

SCHEMA = schema(create_task("multitask").hyperparameters)


def test_default_multitask_space_is_typed() -> None:
    space = load_space(SPACES / "multitask.yaml", schema=SCHEMA)
    kinds = {p.name: type(p.distribution) for p in space.parameters}
    assert space.task == "multitask"
    assert kinds["conv_layers"] is IntDistribution
    assert kinds["lr"] is FloatDistribution and next(p for p in space.parameters if p.name == "lr").distribution.log
    assert kinds["scheduler"] is CategoricalDistribution
    assert {"step", "cosine", "plateau"} <= set(
        next(p for p in space.parameters if p.name == "scheduler").distribution.choices
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"task": "multitask", "paramters": {}}, "paramters: unknown key"),
        ({"task": "multitask", "parameters": {"lr": {"type": "float", "low": 0.1, "high": 0.01}}}, "parameters.lr.low"),
        ({"task": "multitask", "parameters": {"lr": {"type": "float", "low": "small", "high": 1.0}}},
         "parameters.lr.low: expected int or float"),
        ({"task": "multitask", "parameters": {"width": {"type": "int", "low": 8, "high": 32.5}}},
         "parameters.width.high: expected an integer, got 32.5"),
        ({"task": "multitask", "parameters": {"lr": {"type": "float", "low": 0.1, "high": 1, "lg": True}}},
         "parameters.lr.lg: unknown key"),
        ({"task": "multitask", "parameters": {"dropuot": {"type": "float", "low": 0.0, "high": 0.5}}},
         "parameters.dropuot: unknown hyperparameter"),
        ({"task": "multitask", "parameters": {"scheduler": {"type": "categorical", "choices": "step"}}},
         "parameters.scheduler.choices: expected list"),
        ({"task": "multitask", "parameters": {"gamma": {"type": "float", "low": 0.1, "high": 0.5,
                                                        "when": {"scheduler": "step"}}}},
         "parameters.gamma.when.scheduler: condition on a parameter not defined above it"),
        ({"task": "multitask", "parameters": {"lr": {"type": "uniform", "low": 0.1, "high": 1}}}, "parameters.lr.type"),
        ({"task": "multitask", "fixed": {"widht": 8}}, "fixed.widht: unknown hyperparameter"),
        ({"parameters": {}}, "task: required"),
        ({"task": "multitask", "fixed": {"optimizer": "adamz"}},
         "fixed.optimizer: unknown 'adamz'; valid: adam, adamw, sgd"),
        ({"task": "multitask", "parameters": {"optimizer": {"type": "categorical", "choices": ["adam", {"sgd": 1}]}}},
         "parameters.optimizer.choices: expected a name, got {'sgd': 1}"),
        ({"task": "multitask", "fixed": {"augment": 3.0}}, "fixed.augment: must be <= 1.0, got 3.0"),
        ({"task": "multitask", "fixed": {"batch_size": 0}}, "fixed.batch_size: must be >= 1, got 0"),
        ({"task": "multitask", "fixed": {"model": "not_a_model"}},
         "fixed.model: 'not_a_model' is neither 'vgg' nor a timm model name"),
        ({"task": "multitask", "parameters": {"model": {"type": "categorical", "choices": ["vgg", "resnet18x"]}}},
         "parameters.model.choices: 'resnet18x' is neither 'vgg' nor a timm model name"),
        ({"task": "multitask", "fixed": {"batch_norm": "yes"}}, "fixed.batch_norm: expected true or false, got 'yes'"),
        ({"task": "multitask", "fixed": {"pretrained": "/no/such/weights.pth"}},
         "fixed.pretrained: weights file /no/such/weights.pth not found"),
        ({"task": "multitask", "parameters": {"lr": {"type": "float", "low": 0, "high": 0.1}}},
         "parameters.lr.low: must be > 0.0, got 0"),
        ({"task": "multitask", "parameters": {"dropout": {"type": "float", "low": 0.0, "high": 1.5}}},
         "parameters.dropout.high: must be < 1.0, got 1.5"),
        ({"task": "multitask", "parameters": {"batch_size": {"type": "float", "low": 8, "high": 64}}},
         "parameters.batch_size.type: batch_size takes whole numbers; use type int"),
        ({"task": "multitask", "parameters": {"optimizer": {"type": "int", "low": 1, "high": 3}}},
         "parameters.optimizer.type: optimizer takes a name, not a int range; use type categorical"),
        ({"task": "multitask", "parameters": {"normalisation": {"type": "categorical", "choices": ["imagenett"]}}},
         "parameters.normalisation.choices: unknown 'imagenett'; valid: none, minus_one_one, imagenet, standardize"),
        ({"task": "multitask", "fixed": {"loss_weighting": "learned"}},
         "fixed.loss_weighting: unknown 'learned'; valid: fixed, uncertainty"),
        ({"task": "multitask", "fixed": {"image_size": 8}}, "fixed.image_size: must be >= 16, got 8"),
        ({"task": "multitask", "fixed": {"lr": float("nan")}}, "fixed.lr: must be a finite number, got nan"),
        ({"task": "multitask", "parameters": {"lr": {"type": "float", "low": 1.0e-3, "high": float("inf")}}},
         "parameters.lr.high: must be a finite number, got inf"),
        ({"task": "multitask", "fixed": {"lr": None}}, "fixed.lr: expected a number, got None"),
        ({"task": "multitask", "parameters": {"lr": {"type": "float", "low": 1.0e-3, "high": 0.1, "step": 0}}},
         "parameters.lr.step: `step > 0` must hold"),
        ({"task": "multitask", "parameters": {"optimizer": {"type": "categorical", "choices": ["adam", "adam"]}}},
         "parameters.optimizer.choices: 'adam' is listed twice"),
    ],
)
def test_invalid_space_names_the_key(document: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_space(document, source="space.yaml", schema=SCHEMA)
    assert message in str(caught.value)
    assert str(caught.value).startswith("space.yaml: ")
    assert "\n" not in str(caught.value)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("task: multitask\nparameters:\n  lr: {type: float, low: 1\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+: invalid YAML"):
        load_space(path, schema=SCHEMA)


def test_conditional_parameter_sampled_only_when_active() -> None:
    space = parse_space(
        {"task": "multitask", "parameters": {
            "scheduler": {"type": "categorical", "choices": ["step", "cosine"]},
            "step_size": {"type": "int", "low": 1, "high": 3, "when": {"scheduler": "step"}},
        }, "fixed": {"optimizer": "sgd"}},
        source="s", schema=SCHEMA,
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        trial = study.ask()
        fixed = space.sample(trial)
        assert fixed == {"optimizer": "sgd"}
        assert ("step_size" in trial.params) == (trial.params["scheduler"] == "step")
        study.tell(trial, 0.0)
    assert {t.params["scheduler"] for t in study.trials} == {"step", "cosine"}


@pytest.mark.parametrize("path", sorted(SPACES.rglob("*.yaml")), ids=lambda p: str(p.relative_to(SPACES)))
def test_every_shipped_space_is_valid_for_its_task(path: Path) -> None:
    task = yaml.safe_load(path.read_text()).get("task") or path.stem
    space = load_space(path, schema=schema(create_task(task).hyperparameters))
    assert space.task == path.stem
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        space.sample(trial)
        assert all(p.active(trial.params) == (p.name in trial.params) for p in space.parameters)
        study.tell(trial, 0.0)


def test_extends_overrides_parameters_in_place(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "task: multitask\nparameters:\n  model: {type: categorical, choices: [vgg]}\n"
        "  conv_layers: {type: int, low: 2, high: 4, when: {model: vgg}}\nfixed:\n  optimizer: sgd\n"
    )
    (tmp_path / "wide.yaml").write_text(
        "extends: base.yaml\nparameters:\n  model: {type: categorical, choices: [vgg, resnet18]}\n"
        "  dropout: {type: float, low: 0.0, high: 0.5}\n"
    )
    space = load_space(tmp_path / "wide.yaml", schema=SCHEMA)
    assert [p.name for p in space.parameters] == ["model", "conv_layers", "dropout"]
    assert space.parameters[0].distribution.choices == ("vgg", "resnet18")
    assert space.fixed == {"optimizer": "sgd"} and space.task == "multitask"


def test_extends_searches_what_its_parent_fixed_and_fixes_what_it_searched(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "task: multitask\nparameters:\n  dropout: {type: float, low: 0.0, high: 0.5}\nfixed:\n  pretrained: false\n")
    (tmp_path / "child.yaml").write_text(
        "extends: base.yaml\nparameters:\n  pretrained: {type: categorical, choices: [false, true]}\n"
        "fixed:\n  dropout: 0.1\n")
    space = load_space(tmp_path / "child.yaml", schema=SCHEMA)
    assert [p.name for p in space.parameters] == ["pretrained"]
    assert space.fixed == {"dropout": 0.1}


def test_extends_cycle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\ntask: multitask\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\ntask: multitask\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_space(tmp_path / "a.yaml", schema=SCHEMA)


@pytest.mark.parametrize(("fixed", "message"), [
    ({"encoder": "resnet18x"}, "fixed.encoder: unknown 'resnet18x'; use an smp encoder name"),
    ({"encoder": "tu-not_a_model"}, "fixed.encoder: unknown 'tu-not_a_model'"),
    ({"architecture": "unet3"}, "fixed.architecture: unknown 'unet3'; valid: unet, "),
    ({"seg_loss": "dice_ce"}, "fixed.seg_loss: unknown 'dice_ce'; valid: dice, bce, focal, dice_focal, dice_bce"),
])
def test_segmentation_names_are_checked_against_smp(fixed: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_space({"task": "segmentation", "fixed": fixed}, source="seg.yaml",
                    schema=schema(create_task("segmentation").hyperparameters))
    assert str(caught.value).startswith(f"seg.yaml: {message}")


def test_every_default_is_allowed_by_its_own_schema() -> None:
    for task in ("classification", "regression", "multitask", "segmentation"):
        for name, hparam in schema(create_task(task).hyperparameters).items():
            assert hparam.problem(hparam.default) is None, (task, name)
