"""Search spaces: a readable YAML file parsed into validated, typed Optuna distributions.

```yaml
task: multitask
parameters:
  conv_layers: {type: int, low: 2, high: 8}
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  scheduler: {type: categorical, choices: [step, cosine, plateau]}
  step_size: {type: int, low: 1, high: 4, when: {scheduler: step}}
fixed:
  batch_norm: true
```

`when` makes a parameter conditional: it is sampled only when every named parameter (defined above
it) has one of the given values. The sampler is define-by-run, so Optuna sees exactly the parameters
that a trial uses. A condition may also name a fixed value: met, the condition holds for every trial;
not met, the parameter (and any parameter conditioned on it) is dropped, with a note in `SearchSpace.notes`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from raysearch.core.columns import MODES
from raysearch.core.schema import HParam, check_value
from raysearch.errors import ConfigError
from raysearch.search.choices import SCHEDULERS, SEARCHERS

if TYPE_CHECKING:
    import optuna

SPACE_KEYS = {"extends", "task", "description", "metric", "mode", "searcher", "scheduler", "parameters", "fixed"}
PARAMETER_KEYS = {"type": str, "low": (int, float), "high": (int, float), "log": bool, "step": (int, float),
                  "choices": list, "when": dict}
TYPE_KEYS = {"int": {"low", "high"}, "float": {"low", "high"}, "categorical": {"choices"}}


@dataclass(frozen=True)
class Parameter:
    """One searchable hyperparameter: its distribution and the condition under which it is sampled."""

    name: str
    distribution: BaseDistribution
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether this parameter applies, given the values sampled so far."""
        return all(name in values and values[name] in allowed for name, allowed in self.when.items())

    def suggest(self, trial: optuna.Trial) -> Any:
        """Sample this parameter in an Optuna trial."""
        d = self.distribution
        if isinstance(d, FloatDistribution):
            return trial.suggest_float(self.name, d.low, d.high, log=d.log, step=d.step)
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.name, d.low, d.high, log=d.log, step=d.step)
        return trial.suggest_categorical(self.name, d.choices)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description (distribution in Optuna's own JSON form)."""
        return {"distribution": json.loads(distribution_to_json(self.distribution)),
                "when": {k: list(v) for k, v in self.when.items()}}


@dataclass(frozen=True)
class SearchSpace:
    """A task's search space: sampled parameters, fixed values, and the metric to optimise."""

    task: str
    parameters: tuple[Parameter, ...]
    fixed: Mapping[str, Any]
    metric: str | None = None
    mode: str | None = None
    source: str = "<memory>"
    searcher: str | None = None
    scheduler: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        """Every hyperparameter the space sets, sampled or fixed."""
        return [p.name for p in self.parameters] + list(self.fixed)

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Define-by-run sampling for OptunaSearch: suggest the active parameters; return the fixed ones."""
        values: dict[str, Any] = {}
        for parameter in self.parameters:
            if parameter.active(values):
                values[parameter.name] = parameter.suggest(trial)
        return dict(self.fixed)

    def to_dict(self) -> dict[str, Any]:
        """The resolved space, for study.yaml."""
        return {"task": self.task, "source": self.source, "metric": self.metric, "mode": self.mode,
                "searcher": self.searcher, "scheduler": self.scheduler,
                "parameters": {p.name: p.to_dict() for p in self.parameters}, "fixed": dict(self.fixed)}


def _check_type(where: str, value: Any, expected: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) and bool not in (expected if isinstance(expected, tuple) else (expected,)):
        raise ConfigError(f"{where}: expected {_type_name(expected)}, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{where}: expected {_type_name(expected)}, got {value!r}")


def _type_name(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(t.__name__ for t in types)


def _check_against(where: str, name: str, spec: dict[str, Any], hparam: HParam) -> None:
    """The parameter's type, each choice and both range ends checked against the hyperparameter's schema."""
    if spec["type"] == "categorical":
        for value in spec["choices"]:
            check_value({name: hparam}, name, value, f"{where}.choices")
        return
    if not hparam.numeric:
        raise ConfigError(f"{where}.type: {name} takes {hparam.kinds}, not a {spec['type']} range; use type "
                          "categorical")
    if hparam.integral and spec["type"] == "float":
        raise ConfigError(f"{where}.type: {name} takes whole numbers; use type int")
    for key in ("low", "high"):
        check_value({name: hparam}, name, spec[key], f"{where}.{key}")


def _parse_parameter(where: str, name: str, spec: Any, earlier: dict[str, Parameter], fixed: Mapping[str, Any],
                     hparam: HParam | None) -> Parameter:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with 'type', got {spec!r}")
    for key, value in spec.items():
        if key not in PARAMETER_KEYS:
            raise ConfigError(f"{where}.{key}: unknown key (expected one of {', '.join(PARAMETER_KEYS)})")
        _check_type(f"{where}.{key}", value, PARAMETER_KEYS[key])
    kind = spec.get("type")
    if kind not in TYPE_KEYS:
        raise ConfigError(f"{where}.type: must be one of int, float, categorical, got {kind!r}")
    missing = TYPE_KEYS[kind] - spec.keys()
    if missing:
        raise ConfigError(f"{where}: type {kind} needs {', '.join(sorted(missing))}")
    when = _parse_when(f"{where}.when", spec.get("when", {}), earlier, fixed)
    if hparam is not None:
        _check_against(where, name, spec, hparam)
    try:
        if kind == "categorical":
            if not spec["choices"]:
                raise ValueError("choices must not be empty")
            repeated = [c for i, c in enumerate(spec["choices"]) if c in spec["choices"][:i]]
            if repeated:
                raise ValueError(f"{repeated[0]!r} is listed twice")
            distribution: BaseDistribution = CategoricalDistribution(spec["choices"])
        elif kind == "int":
            for key in ("low", "high", "step"):
                if key in spec and not isinstance(spec[key], int):
                    raise ConfigError(f"{where}.{key}: expected int, got {spec[key]!r}")
            distribution = IntDistribution(
                spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step", 1)
            )
        else:
            distribution = FloatDistribution(float(spec["low"]), float(spec["high"]), log=spec.get("log", False),
                                             step=spec.get("step"))
    except ValueError as error:
        mentioned = [key for key in ("step", "low", "high") if key in str(error)]
        key = mentioned[0] if mentioned else "choices" if kind == "categorical" else "low"
        raise ConfigError(f"{where}.{key}: {str(error).splitlines()[0]}") from None
    return Parameter(name, distribution, when)


def _parse_when(where: str, when: dict, earlier: dict[str, Parameter],
                fixed: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
    parsed: dict[str, tuple[Any, ...]] = {}
    for name, allowed in when.items():
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if name in fixed:
            parsed[name] = values
            continue
        if name not in earlier:
            raise ConfigError(f"{where}.{name}: condition on a parameter not defined above it (or fixed)")
        choices = getattr(earlier[name].distribution, "choices", None)
        bad = [v for v in values if choices is not None and v not in choices]
        if bad:
            raise ConfigError(f"{where}.{name}: {bad[0]!r} is not among {list(choices)}")
        parsed[name] = values
    return parsed


def parse_space(data: Any, *, source: str, schema: Mapping[str, HParam] | None = None) -> SearchSpace:
    """Validate a parsed YAML document into a SearchSpace; `schema` holds the task's hyperparameters, against
    which every name, choice, range end and fixed value is checked (raysearch.training.hparams.schema)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    for key in data:
        if key not in SPACE_KEYS:
            raise ConfigError(f"{source}: {key}: unknown key (expected one of {', '.join(sorted(SPACE_KEYS))})")
    if not isinstance(data.get("task"), str):
        raise ConfigError(f"{source}: task: required, a task name")
    raw_parameters = data.get("parameters") or {}
    fixed = data.get("fixed") or {}
    _check_type(f"{source}: parameters", raw_parameters, dict)
    _check_type(f"{source}: fixed", fixed, dict)
    parameters: dict[str, Parameter] = {}
    for name, spec in raw_parameters.items():
        where = f"{source}: parameters.{name}"
        if schema is not None and name not in schema:
            raise ConfigError(f"{where}: unknown hyperparameter for task {data['task']}")
        parameters[name] = _parse_parameter(where, name, spec, parameters, fixed, schema and schema[name])
    kept, notes = _apply_fixed(parameters, fixed)
    for name, value in fixed.items():
        if schema is not None and name not in schema:
            raise ConfigError(f"{source}: fixed.{name}: unknown hyperparameter for task {data['task']}")
        if name in parameters:
            raise ConfigError(f"{source}: fixed.{name}: also listed under parameters")
        if schema is not None:
            check_value(schema, name, value, f"{source}: fixed.{name}")
    mode = data.get("mode")
    if mode is not None and mode not in MODES:
        raise ConfigError(f"{source}: mode: must be {' or '.join(MODES)}, got {mode!r}")
    for key, allowed in (("searcher", SEARCHERS), ("scheduler", SCHEDULERS)):
        if data.get(key) not in (None, *allowed):
            raise ConfigError(f"{source}: {key}: must be one of {', '.join(allowed)}, got {data[key]!r}")
    return SearchSpace(data["task"], kept, dict(fixed), data.get("metric"), mode, source,
                       data.get("searcher"), data.get("scheduler"), notes)


def _apply_fixed(parameters: Mapping[str, Parameter], fixed: Mapping[str, Any]) -> tuple[tuple[Parameter, ...],
                                                                                         tuple[str, ...]]:
    """The parameters with their conditions on fixed values settled: a met one is removed from `when`, an unmet
    one drops the parameter, and so does a condition on a dropped parameter; with a note for each dropped one."""
    kept: list[Parameter] = []
    dropped: set[str] = set()
    notes: list[str] = []
    for parameter in parameters.values():
        unmet = [f"fixed {name}: {fixed[name]!r} is not among {list(allowed)}"
                 for name, allowed in parameter.when.items() if name in fixed and fixed[name] not in allowed]
        unmet += [f"{name} is not searched" for name in parameter.when if name in dropped]
        if unmet:
            dropped.add(parameter.name)
            notes.append(f"parameters.{parameter.name}: not searched ({unmet[0]})")
            continue
        kept.append(replace(parameter, when={k: v for k, v in parameter.when.items() if k not in fixed}))
    return tuple(kept), tuple(notes)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(error, 'problem', error)})") from None


def _resolve_extends(path: Path, data: Any, seen: tuple[Path, ...] = ()) -> Any:
    """Merge a document over the file its `extends:` names (relative to it): keys, parameters and fixed values
    override, and a name the document searches (or fixes) is no longer fixed (or searched) by its parent."""
    if not isinstance(data, dict) or "extends" not in data:
        return data
    if not isinstance(data["extends"], str):
        raise ConfigError(f"{path}: extends: expected a file path, got {data['extends']!r}")
    parent_path = (path.parent / data["extends"]).resolve()
    if parent_path in seen:
        raise ConfigError(f"{path}: extends: {data['extends']} extends itself")
    parent = _resolve_extends(parent_path, _read_yaml(parent_path), (*seen, parent_path))
    if not isinstance(parent, dict):
        raise ConfigError(f"{parent_path}: expected a mapping at the top level")
    merged = {**parent, **{k: v for k, v in data.items() if k not in ("extends", "parameters", "fixed")}}
    for section, other in (("parameters", "fixed"), ("fixed", "parameters")):
        inherited = {k: v for k, v in (parent.get(section) or {}).items() if k not in (data.get(other) or {})}
        merged[section] = {**inherited, **(data.get(section) or {})}
    return merged


def load_space(path: Path, *, schema: Mapping[str, HParam] | None = None) -> SearchSpace:
    """Read and validate a search-space YAML file (following `extends:` to the file it builds on)."""
    return parse_space(_resolve_extends(path, _read_yaml(path), (path.resolve(),)), source=str(path), schema=schema)
