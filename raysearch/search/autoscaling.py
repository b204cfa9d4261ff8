"""Asking the Ray autoscaler for the nodes a study needs, and waiting for the first of them.

A cluster from `ray up cluster.yaml` starts with no GPU worker. Ray Tune only asks the autoscaler for what
its pending trials need, and raysearch never leaves a trial pending on resources the cluster lacks (see
raysearch.search.resources), so without a request here the autoscaler would never add a worker. The
request is Ray's `request_resources`: bundles for the trials the study wants at once; it is withdrawn when
the study ends, so idle workers scale down after the cluster's idle timeout.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from raysearch.errors import ConfigError
from raysearch.search.resources import TrialShape, alive_nodes, capped, concurrency_limit, trials_that_fit

logger = logging.getLogger(__name__)

POLL_S = 2.0
REPORT_EVERY_S = 30.0


def autoscaler_running() -> bool:
    """Whether the connected cluster has an autoscaler that can add nodes: Ray's autoscaler v2 is enabled,
    or the v1 monitor runs a node provider from a cluster config (not the read-only one)."""
    return _on_cluster(_autoscaler_running)


def request_nodes(bundles: list[dict[str, float]]) -> None:
    """Ask the autoscaler to keep nodes that fit `bundles` (all at once); an empty list withdraws the ask."""
    from ray.autoscaler.sdk import request_resources

    _on_cluster(request_resources, bundles=bundles)


def _on_cluster(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call `function` where Ray's GCS client lives: in this process, or, connected through Ray Client
    (a ray:// address), in a task of no CPU on the cluster."""
    import ray

    if ray.util.client.ray.is_connected():
        return ray.get(ray.remote(num_cpus=0)(function).remote(*args, **kwargs))
    return function(*args, **kwargs)


def _autoscaler_running() -> bool:
    """A head started without a cluster config (`ray start --head`) runs the v1 monitor with a read-only
    provider, which reports each node as its own type `node_<id>`; a real provider reports config types."""
    from ray._private import ray_constants
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    if is_autoscaler_v2(fetch_from_server=True):
        return True
    status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    report = json.loads(status).get("autoscaler_report") if status else None
    if not report:
        return False
    types = (report.get("node_type_mapping") or {}).items()
    return any(node_type != format_readonly_node_type(node) for node, node_type in types)


def trial_bundles(shape: TrialShape, trials: int) -> list[dict[str, float]]:
    """The resource bundles of `trials` trials at once: one per Train worker."""
    return [shape.worker()] * (shape.workers * trials)


def wait_for_first_trial(shape: TrialShape, requested: int | None, wait_s: float,
                         nodes: Callable[[], Sequence[Mapping[str, float]]] = alive_nodes,
                         poll_s: float = POLL_S) -> int:
    """Wait until the live nodes fit one trial; return the concurrency they allow (capped by `requested`).
    ConfigError after `wait_s` seconds without a node that fits."""
    started = reported = time.monotonic()
    while (fits := trials_that_fit(nodes(), shape)) < 1:
        waited = time.monotonic() - started
        if waited >= wait_s:
            raise ConfigError(f"--wait-for-nodes: no node that fits one trial ({shape.describe()}) joined the "
                              f"cluster within {wait_s:g} s; check the autoscaler with `ray status` and its log "
                              "(`ray monitor cluster.yaml`), or wait longer")
        if time.monotonic() - reported >= REPORT_EVERY_S:
            reported = time.monotonic()
            logger.warning("raysearch: waiting %.0f s so far for the autoscaler to add a node for %s",
                           waited, shape.describe())
        time.sleep(poll_s)
    return capped(fits, requested)


@contextmanager
def cluster_capacity(shape: TrialShape, requested: int | None, trials: int, wait_s: float) -> Iterator[int]:
    """The number of trials to run at once, with the nodes for them asked of the autoscaler while inside.

    Without an autoscaler it is what the live nodes fit (ConfigError when not one trial fits). With one,
    the autoscaler is asked for nodes to run `requested` (or all `trials`) trials at once, within its
    max_workers; this waits up to `wait_s` seconds for the first node, and withdraws the request on exit.
    """
    if not autoscaler_running():
        yield concurrency_limit(alive_nodes(), shape, requested)
        return
    wanted = min(requested or trials, trials)
    request_nodes(trial_bundles(shape, wanted))
    logger.warning("raysearch: asked the autoscaler for nodes to run %d trial(s) of %s at once",
                   wanted, shape.describe())
    try:
        yield wait_for_first_trial(shape, requested, wait_s)
    finally:
        request_nodes([])
