"""Mutation testing of the core modules with mutmut: the share of mutants each module's tests kill.

Not part of CI (it takes minutes to hours). For each module it copies the project into a work folder, points
mutmut (settings in pyproject.toml `[tool.mutmut]`) at that module and the tests that cover it (fast ones, unless
its Target says otherwise), runs it, and prints caught / missed / other mutants per module with the score:
caught = killed (a test failed) or timed out; missed = survived (every covering test passed) or run by no test;
score = caught / (caught + missed). `--show-survivors` lists the missed ones; `mutmut show <name>` in the module's
work folder shows a mutant's diff.

    nice python benchmarks/mutation.py                      # every module (long)
    nice python benchmarks/mutation.py polygons metrics     # some modules, by short name
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import date
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("raysearch", "tests", "search_spaces", "dashboard", "pyproject.toml", "README.md")


class Target(NamedTuple):
    """One module's mutation run: the files mutated, the test files that cover them, and the pytest marker
    expression choosing among those tests ("" for all of them)."""

    files: list[str]
    tests: list[str]
    markers: str = "not slow"


MODULES: dict[str, Target] = {
    "polygons": Target(["raysearch/data/polygons.py"], ["tests/test_polygons.py"]),
    "metrics": Target(["raysearch/tasks/metrics.py"], ["tests/test_losses_metrics.py", "tests/test_multitask.py"]),
    "losses": Target(["raysearch/tasks/losses.py"], ["tests/test_losses_metrics.py", "tests/test_multitask.py"]),
    "results": Target(["raysearch/search/results.py"], ["tests/test_results.py", "tests/test_loop_behaviour.py"]),
    "cache": Target(["raysearch/data/cache.py"], ["tests/test_cache.py", "tests/test_readers.py"]),
    "optim": Target(["raysearch/training/optim.py", "raysearch/training/hparams.py"],
                    ["tests/test_optim.py", "tests/test_loop_behaviour.py", "tests/test_space.py",
                     "tests/test_pretrained.py"]),
    # all of these files' tests: the one marked slow runs Tune's function trainable in the test's own process
    # (a Ray instance, no study), where mutmut sees which mutants it reaches
    "session": Target(["raysearch/training/session.py"],
                      ["tests/test_checkpoints.py", "tests/test_session.py", "tests/test_train_session.py"], ""),
    "loop": Target(["raysearch/training/batches.py", "raysearch/training/validation.py",
                    "raysearch/training/trainer.py",
                    "raysearch/training/callbacks.py", "raysearch/training/precision.py"],
                   ["tests/test_loop_behaviour.py", "tests/test_checkpoints.py", "tests/test_trainer.py",
                    "tests/test_augment.py", "tests/test_multitask.py"]),
}
DETECTED = ("killed", "timeout")  # a mutant that makes a test fail or hang is caught
MISSED = ("survived", "no tests")  # one that every covering test passes, or that no test runs


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _configure(pyproject: Path, target: Target) -> None:
    """Add this module's `only_mutate` and test selection to the copied `[tool.mutmut]` table (mutmut runs each
    mutant with the tests that its statistics run, over this selection, found reaching it)."""
    text = pyproject.read_text()
    header = "[tool.mutmut]\n"
    if header not in text:
        raise SystemExit(f"{pyproject}: no [tool.mutmut] table")
    selection = target.tests + (["-m", target.markers] if target.markers else [])
    chosen = f"only_mutate = {_toml_list(target.files)}\npytest_add_cli_args_test_selection = {_toml_list(selection)}\n"
    pyproject.write_text(text.replace(header, header + chosen, 1))


def _statuses(work: Path) -> dict[str, str]:
    """Every mutant's status, from the `.meta` files mutmut writes beside each mutated module."""
    from mutmut.stats import status_by_exit_code

    found: dict[str, str] = {}
    for meta in (work / "mutants").rglob("*.py.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            found[name] = status_by_exit_code[code]
    return found


def _copy_project(work: Path, target: Target) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for item in COPIED:
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, work / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, work / item)
    _configure(work / "pyproject.toml", target)


def run_module(name: str, work: Path, children: int, minutes: float | None, only: list[str],
               missed_only: bool = False) -> None:
    """Run mutmut over one module in a fresh copy of the project at `work`, for at most `minutes` (the
    mutants not reached by then stay "not checked"); `only` restricts it to mutant names matching globs.
    With `missed_only`, keep `work` and run only its missed and unchecked mutants against the current tests and
    test selection."""
    if missed_only:
        only = [m for m, status in _statuses(work).items() if status in (*MISSED, "not checked")]
        shutil.copytree(ROOT / "tests", work / "tests", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")  # the module's current test selection
        _configure(work / "pyproject.toml", MODULES[name])
        if not only:
            return
    else:
        _copy_project(work, MODULES[name])
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    mutmut = Path(sys.executable).with_name("mutmut")
    process = subprocess.Popen([str(mutmut), "run", "--max-children", str(children), *only], cwd=work,
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=None if minutes is None else minutes * 60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)  # mutmut and the test runs it forked
        process.communicate()
        print(f"{name}: stopped after {minutes:g} minutes", file=sys.stderr)
        return
    if process.returncode != 0:
        print(output[-3000:], file=sys.stderr)
        raise SystemExit(f"mutmut failed on {name} (exit {process.returncode}); its work folder: {work}")


def report(name: str, statuses: dict[str, str], show_survivors: bool) -> None:
    """One line per module: caught, missed, other statuses, score; then the missed mutants if asked."""
    counts = Counter(statuses.values())
    caught, missed = sum(counts[s] for s in DETECTED), sum(counts[s] for s in MISSED)
    other = {k: v for k, v in counts.items() if k not in DETECTED + MISSED}
    score = f"{100 * caught / (caught + missed):.1f} %" if caught + missed else "n/a"
    print(f"{name:<10} {caught:>7} {missed:>9} {sum(other.values()):>6} {score:>7}  "
          f"{', '.join(f'{k} {v}' for k, v in sorted(other.items()))}", flush=True)
    if show_survivors:
        for mutant, status in sorted(statuses.items()):
            if status in MISSED:
                print(f"    {status}: {mutant}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"short names, of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "raysearch-mutation",
                        help="where the per-module copies go (kept, for `mutmut show`)")
    parser.add_argument("--children", type=int, default=max((os.cpu_count() or 2) // 2, 1),
                        help="mutants tested at once")
    parser.add_argument("--minutes", type=float, help="stop each module's run after this long (partial score)")
    parser.add_argument("--only", nargs="+", default=[], metavar="GLOB",
                        help="mutant names to run, e.g. 'raysearch.data.cache.x_dataset_fingerprint*'")
    parser.add_argument("--report", action="store_true", help="only report the work folders' last results")
    parser.add_argument("--missed-only", action="store_true",
                        help="rerun only the missed and unchecked mutants of the last run, with the current tests")
    parser.add_argument("--show-survivors", action="store_true")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.modules) - set(MODULES))
    if unknown:
        parser.error(f"unknown module {unknown[0]!r}; valid: {', '.join(MODULES)}")
    print(f"mutation testing with mutmut, {date.today().isoformat()}, {os.cpu_count()} CPUs")
    print(f"{'module':<10} {'caught':>7} {'missed':>9} {'other':>6} {'score':>7}  other statuses")
    for name in args.modules or list(MODULES):
        if not args.report:
            run_module(name, args.work / name, args.children, args.minutes, args.only, args.missed_only)
        report(name, _statuses(args.work / name), args.show_survivors)

if __name__ == "__main__":
    main()
