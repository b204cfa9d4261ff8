"""Where each task class registers itself under its name (the `@register_task` decorator)."""

from __future__ import annotations

from raysearch.tasks.base import Task

TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator adding a Task subclass to the registry under its `name`."""
    TASKS[cls.name] = cls
    return cls
