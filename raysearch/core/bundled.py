"""Where the files that ship beside the code are: the default search spaces and the Streamlit dashboard.

In the repository they sit at the top level (`search_spaces/`, `dashboard/`); a wheel carries them inside
the package (`raysearch/search_spaces/`, `raysearch/dashboard/`, mapped by pyproject.toml's
`package-dir`). Both are looked up the same way, through `importlib.resources`: inside the package first,
else beside it in the source checkout the package was imported from.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

from raysearch.errors import ConfigError

SEARCH_SPACES, DASHBOARD, DASHBOARD_APP = "search_spaces", "dashboard", "app.py"


def bundled_dir(name: str) -> Path:
    """The folder `name` shipped with raysearch: inside the installed package, or at the checkout's top level."""
    with as_file(files("raysearch")) as package:
        for candidate in (package / name, package.parent / name):
            if candidate.is_dir():
                return candidate
    raise ConfigError(f"{name}/ is missing from the raysearch installation at {package} (reinstall raysearch)")


def search_spaces_dir() -> Path:
    """The folder of the default search spaces, one `TASK.yaml` per task (and `reference/`)."""
    return bundled_dir(SEARCH_SPACES)


def dashboard_app() -> Path:
    """The Streamlit dashboard's entry script."""
    return bundled_dir(DASHBOARD) / DASHBOARD_APP
