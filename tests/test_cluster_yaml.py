"""cluster.yaml, checked offline with the Ray autoscaler's own config code, the way `ray up` checks it.

`ray up` (ray.autoscaler._private.commands._bootstrap_config) runs, in order:
  1. util.prepare_config: fill out the provider's defaults.yaml, merge setup commands, per-type min/max workers;
  2. provider.fillout_available_node_types_resources: asks EC2 for instance sizes (boto3, network);
  3. util.validate_config: the JSON schema ray/autoscaler/ray-schema.json plus Ray's cross-field checks;
  4. provider.bootstrap_config: IAM profile, key pair, subnets, security groups (boto3, network).
Steps 1 and 3 are pure and need no cloud SDK; these tests run them. Steps 2 and 4 call AWS and are left out, so
what only AWS checks (the keys inside `node_config`, AMI ids, IAM names) is not covered here.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"

Config = dict[str, Any]


def _load() -> Config:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def raw() -> Config:
    return _load()


@pytest.fixture(scope="module")
def prepared(raw: Config) -> Config:
    return prepare_config(copy.deepcopy(raw))


def _worker_types(config: Config) -> dict[str, Config]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def _ray_starts(commands: list[str]) -> list[tuple[dict[str, str], list[str]]]:
    """Each `ray start` in a list of shell commands, as (inline environment, arguments after `ray start`)."""
    starts = []
    for command in commands:
        for segment in command.split(";"):
            words = shlex.split(segment)
            for i in range(len(words) - 1):
                if words[i : i + 2] == ["ray", "start"]:
                    env = dict(w.split("=", 1) for w in words[:i] if "=" in w)
                    starts.append((env, words[i + 2 :]))
    return starts


def _all_commands(config: Config) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [c for key in keys for c in config.get(key, [])]


# --- the file as shipped --------------------------------------------------------------------------------------


def test_yaml_round_trip(raw: Config) -> None:
    assert yaml.safe_load(yaml.safe_dump(raw, sort_keys=False)) == raw


def test_shipped_file_passes_ray_preparation_and_validation(raw: Config, prepared: Config) -> None:
    validate_config(prepared)  # raises jsonschema.ValidationError (or ValueError) on a bad config
    assert prepared["provider"]["type"] == "aws"
    assert prepared["cluster_name"] == raw["cluster_name"]


def test_validation_needs_no_cloud_sdk() -> None:
    """prepare_config + validate_config run with boto3 and botocore made unimportable: no AWS call is possible."""
    code = (
        "import sys; sys.modules['boto3'] = None; sys.modules['botocore'] = None\n"
        "import yaml\n"
        "from ray.autoscaler._private.util import prepare_config, validate_config\n"
        f"validate_config(prepare_config(yaml.safe_load(open({str(CLUSTER_YAML)!r}))))\n"
        "print('validated')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "validated" in result.stdout


def test_start_commands_are_explicit_not_ray_defaults(raw: Config, prepared: Config) -> None:
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert raw.get(key), f"{key} must be written out in cluster.yaml"
        assert prepared[key] == raw[key]
    assert len(_ray_starts(raw["head_start_ray_commands"])) == 1
    assert len(_ray_starts(raw["worker_start_ray_commands"])) == 1


def test_head_offers_no_cpus_to_trials(prepared: Config) -> None:
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head.get("resources", {}).get("GPU", 0) == 0
    assert head["max_workers"] == 0
    [(_, args)] = _ray_starts(prepared["head_start_ray_commands"])
    assert "--head" in args
    assert "--num-cpus=0" in args


def test_workers_are_autoscaling_spot_gpu_nodes(prepared: Config) -> None:
    workers = _worker_types(prepared)
    assert workers, "at least one worker node type"
    for name, worker in workers.items():
        assert worker["resources"].get("GPU", 0) >= 1, name
        assert worker["resources"].get("CPU", 0) >= 1, name
        assert worker["min_workers"] == 0, name
        assert 1 <= worker["max_workers"] <= prepared["max_workers"], name
        assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
    assert prepared["max_workers"] >= 1


def test_project_and_dependencies_installed_on_every_node(prepared: Config) -> None:
    mounts = prepared["file_mounts"]
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    for needed in ("pyproject.toml", readme, "raysearch", "search_spaces"):
        assert mounts.get(f"~/raysearch/{needed}") == f"./{needed}", needed
    for remote, local in mounts.items():
        if local.startswith("./") and Path(local).suffix == "":
            assert (ROOT / local).is_dir(), f"{remote}: {local} is not a folder of this checkout"
    # setup_commands run on the head and on every worker (prepare_config merges them into both lists).
    installs = [c for c in prepared["setup_commands"] if "pip install" in c and "-e ~/raysearch" in c]
    assert installs, "setup_commands install the mounted project"
    for merged in ("head_setup_commands", "worker_setup_commands"):
        assert installs[0] in prepared[merged]
    assert any("pip install" in c and "boto3" in c for c in prepared["head_setup_commands"]), "the autoscaler"


def _installed_requirements(command: str) -> list[str]:
    """The requirements that a `pip install` / `uv pip install` command names (options and their values left out)."""
    words = shlex.split(command.split("#", 1)[0])
    starts = [i + 2 for i in range(len(words) - 1) if words[i : i + 2] == ["pip", "install"]]
    found = []
    for start in starts:
        skip_next = False
        for word in words[start:]:
            if word in (";", "&&", "||", "|") or word.endswith(";"):
                break
            if skip_next:
                skip_next = False
            elif word in ("--python", "-r", "-c", "--index-url", "--target", "-e", "--editable"):
                skip_next = True  # an option's value; -e names the mounted checkout, pinned by this commit
            elif not word.startswith("-"):
                found.append(word)
    return found


def test_installs_are_pinned_and_no_script_is_piped_into_a_shell(raw: Config) -> None:
    commands = _all_commands(raw)
    for command in commands:
        assert "curl" not in command and "wget" not in command, command
        assert not re.search(r"\|\s*(sudo\s+)?(ba|z)?sh\b", command), command
    requirements = [r for c in commands for r in _installed_requirements(c)]
    assert {"uv==0.13.9", "boto3==1.44.8", "ray[default,tune,train]==2.60.0"} <= set(requirements)
    for requirement in requirements:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[0-9][0-9A-Za-z.]*", requirement), (
            f"unpinned install: {requirement}")


def test_pin_check_catches_what_it_should() -> None:
    assert _installed_requirements('uv pip install --python ~/venv/bin/python "ray[tune]==2.60.0" -e ~/raysearch') == [
        "ray[tune]==2.60.0"]
    assert _installed_requirements("python3 -m pip install --user boto3") == ["boto3"]


def test_results_go_to_storage_every_node_shares(prepared: Config) -> None:
    exports = [m.group(1) for c in prepared["head_setup_commands"]
               for m in re.finditer(r"echo 'export RAYSEARCH_RESULTS=([^'\s;]+)'", c)]
    assert len(exports) == 1 and exports[0].startswith("/mnt/raysearch/"), exports
    mounts = [c for c in prepared["setup_commands"] if "mount -t nfs4" in c]
    assert len(mounts) == 1 and "/mnt/raysearch" in mounts[0], "every node mounts the shared file system"
    for merged in ("head_setup_commands", "worker_setup_commands"):
        assert mounts[0] in prepared[merged]
    assert prepared["cluster_synced_files"] == []
    assert '--results "$RAYSEARCH_RESULTS"' in CLUSTER_YAML.read_text()  # the documented `raysearch run`


def test_pretrained_weights_come_from_one_cache_on_shared_storage(prepared: Config) -> None:
    starts = _ray_starts(prepared["head_start_ray_commands"]) + _ray_starts(prepared["worker_start_ray_commands"])
    homes = {env.get("HF_HOME") for env, _ in starts}
    assert len(homes) == 1 and next(iter(homes)).startswith("/mnt/raysearch/"), homes
    [home] = homes
    exports = [c for c in prepared["setup_commands"] if f"echo 'export HF_HOME={home}'" in c]
    assert exports, "shells on the nodes (`raysearch weights fetch`) use the same cache as the workers"
    for merged in ("head_setup_commands", "worker_setup_commands"):
        assert exports[0] in prepared[merged]


def test_dashboard_stays_on_head_localhost(prepared: Config) -> None:
    [(_, args)] = _ray_starts(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in args
    assert not any("0.0.0.0" in c for c in _all_commands(prepared))


def test_token_authentication_stays_on(prepared: Config) -> None:
    starts = _ray_starts(prepared["head_start_ray_commands"]) + _ray_starts(prepared["worker_start_ray_commands"])
    assert len(starts) == 2
    for env, _ in starts:
        assert env.get("RAY_AUTH_MODE") == "token"
    # Ray reads the token from ~/.ray/auth_token; the launcher copies the user's token there on every node.
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("export RAY_AUTH_MODE=token" in c for c in prepared["setup_commands"]), "clients on the nodes"
    assert "RAY_AUTH_MODE=disabled" not in CLUSTER_YAML.read_text()


# --- typos fail Ray's validation --------------------------------------------------------------------------------


def _rename(mapping: Config, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def _typo_top_level_max_workers(config: Config) -> None:
    _rename(config, "max_workers", "max_worker")


def _typo_top_level_start_commands(config: Config) -> None:
    _rename(config, "head_start_ray_commands", "head_start_ray_command")


def _typo_worker_type_min_workers(config: Config) -> None:
    worker = next(iter(_worker_types(config).values()))
    _rename(worker, "min_workers", "min_worker")


def _typo_head_type_resources(config: Config) -> None:
    _rename(config["available_node_types"][config["head_node_type"]], "resources", "resource")


@pytest.mark.parametrize(("typo", "complaint"), [
    pytest.param(_typo_top_level_max_workers, "'max_worker' was unexpected", id="top-level max_worker"),
    pytest.param(_typo_top_level_start_commands, "'head_start_ray_command' was unexpected",
                 id="top-level head_start_ray_command"),
    pytest.param(_typo_worker_type_min_workers, "'min_worker' was unexpected", id="worker type min_worker"),
    pytest.param(_typo_head_type_resources, "'resources' is a required property", id="head type resource"),
])
def test_typo_in_a_key_fails_validation(typo: Callable[[Config], None], complaint: str) -> None:
    config = _load()
    typo(config)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(complaint)):
        validate_config(prepare_config(config))
