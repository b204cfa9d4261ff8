"""`raysearch run --address` against a real autoscaling Ray cluster on this machine: a head node of 0 CPUs
(like cluster.yaml's) whose autoscaler is Ray's own, with its fake multi-node provider, which starts
worker nodes as local raylets (see local_cluster). The cluster starts with no worker, so no trial fits
until raysearch asks the autoscaler for one; when the study ends the request is withdrawn and the idle
worker scales down. The study that scales the cluster joins it through the GCS address, as on the head
node; the other through Ray Client (ray://), as from a laptop.

Ray Client starts a server process per connection and gives it 30 s to answer
(RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S); on a loaded 2-core machine, with a fresh virtual
environment whose imports are not yet compiled, that is too short, so the head here gives it longer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from local_cluster import free_port, head_options, node_root, start_node, stop_nodes, token_environment
from ray_processes import wait_for

from raysearch.data.phantom import PhantomSpec, write_phantom

WORKER_CPUS = 2
IDLE_TIMEOUT_MINUTES = 0.1


def _autoscaler_config(gcs_address: str) -> dict:
    """A cluster-launcher config for the fake multi-node provider: the head runs nothing, and one node type
    of WORKER_CPUS CPUs stands in for cluster.yaml's GPU workers (min 0, max 1)."""
    return {
        "cluster_name": "raysearch-test", "max_workers": 1, "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "workers": {"resources": {"CPU": WORKER_CPUS}, "node_config": {}, "min_workers": 0, "max_workers": 1},
        },
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        **{commands: [] for commands in ("initialization_commands", "setup_commands", "head_setup_commands",
                                         "worker_setup_commands", "head_start_ray_commands",
                                         "worker_start_ray_commands")},
    }


@dataclass(frozen=True)
class Cluster:
    address: str
    client_address: str
    head_temp: Path

    def client_server_logs(self) -> str:
        """The end of each Ray Client server's error log on the head: why a ray:// connection failed there."""
        logs = sorted(self.head_temp.glob("session_*/logs/ray_client_server*.err"))
        return "\n".join(f"--- {log.name}:\n{log.read_text(errors='replace')[-2000:]}" for log in logs)


@pytest.fixture(scope="module")
def autoscaling_cluster() -> Iterator[Cluster]:
    """A head node of 0 CPUs with an autoscaler that can add one worker."""
    port, client_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    with node_root() as root:
        config = root / "autoscaler.json"
        config.write_text(json.dumps(_autoscaler_config(address)))
        head = start_node(root, "head", address, *head_options(port, client_port), f"--autoscaling-config={config}",
                          cpus=0, environment={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                                               "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "300"})
        try:
            yield Cluster(address, f"ray://127.0.0.1:{client_port}", root / "head")
        finally:
            stop_nodes(head)


def _alive_nodes(address: str) -> int:
    listed = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "list", "nodes", "--address", address,
                             "--filter", "state=ALIVE", "--format", "json", "--limit", "100"],
                            capture_output=True, text=True, env=token_environment(), timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    return len(json.loads(listed.stdout))


def _run(address: str, data: Path, results: Path, name: str, *options: str) -> subprocess.CompletedProcess:
    space = data.parent / "space.yaml"
    space.write_text("task: multitask\nparameters:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
                     "fixed: {model: vgg, conv_layers: 3, width: 8, patience: 0}\n")
    return subprocess.run([sys.executable, "-m", "raysearch", "run", "multitask", "--data", str(data), "--space",
                           str(space), "--trials", "2", "--max-epochs", "2", "--image-size", "32", "--address",
                           address, "--results", str(results), "--name", name, "--quiet", *options],
                          capture_output=True, text=True, env=token_environment(), timeout=900)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("autoscaling")
    return write_phantom(root / "phantom", PhantomSpec(train=48, val=16, test=8, image_size=64), progress=False)


@pytest.mark.slow
def test_a_study_scales_a_cluster_up_from_no_worker_and_lets_it_scale_down(
        autoscaling_cluster: Cluster, phantom: Path, tmp_path: Path) -> None:
    assert _alive_nodes(autoscaling_cluster.address) == 1
    run = _run(autoscaling_cluster.address, phantom, tmp_path / "results", "scaled")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "asked the autoscaler for nodes to run 2 trial(s) of 1 worker of 1 CPU at once" in output

    study = tmp_path / "results" / "scaled"
    resolved = yaml.safe_load((study / "study.yaml").read_text())
    assert resolved["resources"]["cluster"] == {"CPU": float(WORKER_CPUS)}, "the autoscaler's worker joined"
    assert resolved["resources"]["concurrency"] == WORKER_CPUS
    trials = pq.read_table(study / "trials.parquet").to_pandas()
    assert len(trials) == 2 and set(trials["status"]) <= {"COMPLETED", "PRUNED"}

    wait_for(lambda: _alive_nodes(autoscaling_cluster.address) == 1, 180,
             "the idle worker to scale down once the study withdrew its resource request", every=3)


@pytest.mark.slow
def test_a_trial_no_node_type_fits_fails_after_the_wait_with_a_one_line_error(
        autoscaling_cluster: Cluster, phantom: Path, tmp_path: Path) -> None:
    run = _run(autoscaling_cluster.client_address, phantom, tmp_path / "results", "too-big", "--cpus-per-worker", "4",
               "--wait-for-nodes", "5")
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("raysearch: error: --wait-for-nodes: no node that fits one trial (1 worker of 4 CPU) joined "
                           "the cluster within 5 s"), run.stderr[-3000:] + autoscaling_cluster.client_server_logs()
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "results" / "too-big" / "trials.parquet").exists()
