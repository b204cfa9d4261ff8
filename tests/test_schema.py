"""A trial's configuration: every hyperparameter typed and validated against the schema, and read-only."""

from __future__ import annotations

import pickle

import pytest

from raysearch.core.schema import HParams
from raysearch.errors import ConfigError
from raysearch.tasks import create_task
from raysearch.training.hparams import defaults, schema

SCHEMA = schema(create_task("multitask").hyperparameters)


def test_configuration_holds_defaults_overlaid_with_the_trial_values() -> None:
    hp = HParams(SCHEMA, {"lr": 0.02, "optimizer": "sgd"})
    assert dict(hp) == {**defaults(create_task("multitask").hyperparameters), "lr": 0.02, "optimizer": "sgd"}
    assert hp["lr"] == 0.02 and hp.get("missing", 7) == 7 and {**hp}["optimizer"] == "sgd"


def test_configuration_is_read_only() -> None:
    hp = HParams(SCHEMA, {})
    with pytest.raises(TypeError):
        hp["lr"] = 1.0  # type: ignore[index]
    with pytest.raises(AttributeError):
        hp.update({"lr": 1.0})  # type: ignore[attr-defined]


@pytest.mark.parametrize(("values", "message"), [
    ({"optimizer": "adamz"}, "trial t1: optimizer: unknown 'adamz'; valid: adam, adamw, sgd"),
    ({"batch_size": 8.0}, "trial t1: batch_size: expected an integer, got 8.0"),
    ({"dropout": 1.0}, "trial t1: dropout: must be < 1.0, got 1.0"),
    ({"learning_rate": 0.1}, "trial t1: learning_rate: unknown hyperparameter"),
])
def test_configuration_refuses_a_bad_value_naming_trial_and_key(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        HParams(SCHEMA, values, where="trial t1")
    assert str(caught.value) == message


def test_configuration_survives_pickling_as_ray_sends_it() -> None:
    hp = HParams(SCHEMA, {"lr": 0.005})
    copy = pickle.loads(pickle.dumps(hp))
    assert isinstance(copy, HParams) and dict(copy) == dict(hp)
