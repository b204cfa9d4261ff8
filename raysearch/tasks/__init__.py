"""The task registry: a task name maps to its Task class; unknown names fail with the valid ones."""

from __future__ import annotations

from raysearch.errors import ConfigError
from raysearch.tasks.base import Task
from raysearch.tasks.registry import TASKS as _TASKS
from raysearch.tasks.registry import register_task


def _load_builtin_tasks() -> None:
    from raysearch.tasks import classification, multitask, regression, segmentation  # noqa: F401  (register themselves)


def task_names() -> list[str]:
    """Every registered task name."""
    _load_builtin_tasks()
    return sorted(_TASKS)


def create_task(name: str) -> Task:
    """An instance of the named task, or a ConfigError listing the valid names."""
    _load_builtin_tasks()
    if name not in _TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]()


__all__: list[str] = ["Task", "create_task", "register_task", "task_names"]
