"""Search-space parsing: the shipped spaces are valid; invalid files are refused naming the key."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from raysearch.errors import ConfigError
from raysearch.space import load_space, parse_space
from raysearch.study import SEARCH_SPACES
from raysearch.tasks import create_task
from raysearch.training.hparams import defaults

KNOWN = set(defaults(create_task("multitask").hyperparameters))


def test_default_multitask_space_is_typed() -> None:
    space = load_space(SEARCH_SPACES / "multitask.yaml", known=KNOWN)
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
         "parameters.width.high: expected int"),
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
    ],
)
def test_invalid_space_names_the_key(document: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_space(document, source="space.yaml", known=KNOWN)
    assert message in str(caught.value)
    assert str(caught.value).startswith("space.yaml: ")
    assert "\n" not in str(caught.value)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("task: multitask\nparameters:\n  lr: {type: float, low: 1\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+: invalid YAML"):
        load_space(path, known=KNOWN)


def test_conditional_parameter_sampled_only_when_active() -> None:
    space = parse_space(
        {"task": "multitask", "parameters": {
            "scheduler": {"type": "categorical", "choices": ["step", "cosine"]},
            "step_size": {"type": "int", "low": 1, "high": 3, "when": {"scheduler": "step"}},
        }, "fixed": {"optimizer": "sgd"}},
        source="s", known=KNOWN,
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        trial = study.ask()
        fixed = space.sample(trial)
        assert fixed == {"optimizer": "sgd"}
        assert ("step_size" in trial.params) == (trial.params["scheduler"] == "step")
        study.tell(trial, 0.0)
    assert {t.params["scheduler"] for t in study.trials} == {"step", "cosine"}
