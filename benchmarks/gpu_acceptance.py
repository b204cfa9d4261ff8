"""One prepared acceptance run of the GPU pipeline: every check in one call of the GPU machine, one summary table.

Steps, each under its own time cap, each failure a FAIL row (the script goes on to the next step):

1. gpu tests: `pytest -m gpu` on the test files that hold gpu-marked tests;
2. throughput: benchmarks/gpu_throughput.py (a trial ÷ a plain PyTorch loop, augment 0 and 0.5, fp32 and bf16);
3. packed search: 4 classification trials sharing the GPU (--trials-per-gpu 4) with `nvidia-smi dmon` beside
   it: mean SM busy and the share of idle seconds between the first and the last busy second;
4. classification and multitask searches on the real bone-fracture split with `--time-budget` (the minutes
   left, shared evenly; the packing the device plan chooses unless --trials-per-gpu), then `raysearch evaluate`
   on the best trial, against the published recipes' test figures.

Studies go under --work; the logs (one per step, dmon.log) and the table (summary.txt, rewritten after every
step) under --out, flat, so that the device tool brings them back. The searches share one local Ray instance
started here. Exit status 1 when a step could not run to its end (a missed target is a FAIL row, not an error).

    . .gpu/env.sh && python3 benchmarks/gpu_acceptance.py --out $OUT         # on the GPU machine (docs/gpu.md)
    python benchmarks/gpu_acceptance.py --cpu-smoke --out /tmp/acceptance     # every step at toy size, CPU
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_DATA = ROOT / ".gpu" / "bone-fracture-labelled"   # what ../shared/tools/gpu-bundle packs
SHARED_DATA = ROOT.parent / "shared" / "datasets" / "bone-fracture-yolo"
SUMMARY_FILE, DMON_FILE = "summary.txt", "dmon.log"
PASS, FAIL, INFO, NA_ON_CPU, SKIPPED = "PASS", "FAIL", "info", "n/a on CPU", "skipped"
GPU_MARK = "pytest.mark.gpu"
MARGIN_S = 15.0          # kept free before the deadline
SM_BUSY_TARGET = 70.0    # % of one GPU kept busy by the packed search
THROUGHPUT_TARGETS = ((0.0, 0.9), (0.5, 0.8))   # augment strength, least share of a plain loop's images/s
PRECISIONS = ("fp32", "bf16")
# The published hand-tuned recipes' test figures (../shared/reference-recipes.md): (metric, target, higher is better)
PUBLISHED = {"classification": (("accuracy", 0.8554, True),),
             "multitask": (("accuracy", 0.5904, True), ("apd", 0.140, False))}
PACKED_SPACE = """task: classification
metric: val_score
mode: max
parameters:
  lr: {{type: float, low: 1.0e-4, high: 3.0e-3, log: true}}
  augment: {{type: float, low: 0.0, high: 0.8}}
fixed:
  model: {model}
  batch_size: {batch_size}
"""
SMOKE_SPACE = """task: {task}
metric: val_score
mode: max
parameters:
  lr: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
fixed:
  model: vgg
  conv_layers: 2
  width: 8
  batch_size: 16
"""


@dataclass(frozen=True)
class Sizes:
    """What differs between the GPU run and the CPU smoke run."""

    image_size: int
    model: str
    batch_size: int
    throughput_epochs: int
    packed_trials: int
    packed_epochs: int
    search_trials: int
    search_epochs: int
    caps: dict[str, float]       # seconds at most, per fixed step
    min_search_s: float          # a search is not started with less
    search_overhead_s: float     # a search's cap minus its --time-budget (start, the last trials, test, export)
    evaluate_s: float            # kept for `raysearch evaluate` out of each search's share


GPU_SIZES = Sizes(image_size=224, model="resnet18", batch_size=64, throughput_epochs=4, packed_trials=4,
                  packed_epochs=12, search_trials=1000, search_epochs=12,
                  caps={"gpu-tests": 60, "throughput": 100, "packed-search": 110},
                  min_search_s=60, search_overhead_s=55, evaluate_s=25)
SMOKE_SIZES = Sizes(image_size=32, model="vgg", batch_size=16, throughput_epochs=2, packed_trials=2,
                    packed_epochs=1, search_trials=1, search_epochs=1,
                    caps={"gpu-tests": 180, "throughput": 180, "packed-search": 300},   # a busy 2-core CI box
                    min_search_s=20, search_overhead_s=15, evaluate_s=60)


class StepError(Exception):
    """A step could not run to its end; the message says why, in one line."""


@dataclass
class Context:
    """What every step reads: the options, the sizes, the deadline, the data and the Ray address."""

    cpu: bool
    out: Path
    work: Path
    data: Path
    sizes: Sizes
    deadline: float
    trials_per_gpu: int | None
    address: str | None = None
    ray_error: str = "Ray not started"
    searches_left: int = len(PUBLISHED)

    def left(self) -> float:
        """Seconds until the deadline, less the margin."""
        return self.deadline - time.monotonic() - MARGIN_S

    def cap(self, step: str) -> float:
        """The step's own cap, or what is left when that is less."""
        return max(min(self.sizes.caps[step], self.left()), 1.0)


Figures = dict[str, tuple[str, str]]   # row name -> (figure, verdict)


@dataclass(frozen=True)
class Step:
    """A step: its name (also its log's stem), its rows (name, target) and the function that fills them."""

    name: str
    rows: tuple[tuple[str, str], ...]
    run: Callable[[Context, Path, Figures], None]
    needs_ray: bool = False


@dataclass
class Row:
    step: str
    name: str
    target: str
    figure: str = "not run"
    verdict: str = FAIL


@dataclass
class Summary:
    """The table: every row of every step from the start, so that a step that fails leaves FAIL rows, never gaps."""

    header: str
    rows: list[Row] = field(default_factory=list)

    def render(self) -> str:
        """A Markdown table under the header."""
        lines = [self.header, "", "| step | check | figure | target | result |", "| --- | --- | --- | --- | --- |"]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in (r.step, r.name, r.figure, r.target, r.verdict))
                  + " |" for r in self.rows]
        return "\n".join(lines) + "\n"


def verdict(passed: bool) -> str:
    return PASS if passed else FAIL


def trials(count: int) -> str:
    return f"{count} trial{'s' if count != 1 else ''}"


def environment() -> dict[str, str]:
    """The environment of every command: this one's (Ray's API server address included, once Ray is up)."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}


def run_logged(command: list[str], log: Path, cap: float) -> str:
    """Run `command` in the repository root, its output appended to `log`; its output. StepError when it ran
    past `cap` seconds (its process group is killed) or exited non-zero."""
    with log.open("a") as sink:
        sink.write(f"$ {shlex.join(command)}    # cap {cap:.0f} s\n")
        sink.flush()
        start = sink.tell()
        process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env=environment(),
                                   start_new_session=True)
        try:
            status = process.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status = None
    with log.open() as source:
        source.seek(start)
        output = source.read()
    if status is None:
        raise StepError(f"ran past its {cap:.0f} s cap")
    if status != 0:
        last = next((line for line in reversed(output.splitlines()) if line.strip()), "no output")
        raise StepError(f"exit {status}: {last.strip()[:160]}")
    return output


def pytest_counts(output: str) -> dict[str, int]:
    """pytest's final counts ('3 passed, 40 deselected in 2.1s' -> {'passed': 3, 'deselected': 40})."""
    for line in reversed(output.splitlines()):
        counts = re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)\b", line)
        if counts:
            return {name.rstrip("s") if name.startswith("error") else name: int(n) for n, name in counts}
    return {}


def gpu_tests(ctx: Context, log: Path, figures: Figures) -> None:
    """The gpu-marked tests (deselected, so none run, without CUDA)."""
    files = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py")) if GPU_MARK in p.read_text()]
    # `-o addopts=`: in one process, without pytest-xdist (pyproject's addopts ask for it; the GPU machine may lack it)
    command = [sys.executable, "-m", "pytest", "-o", "addopts=", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    try:
        output, error = run_logged(command, log, ctx.cap("gpu-tests")), None
    except StepError as failure:
        output, error = log.read_text(), failure
    counts = pytest_counts(output)
    ran = sum(n for name, n in counts.items() if name != "deselected")
    figure = ", ".join(f"{n} {name}" for name, n in counts.items()) or "no counts"
    if ctx.cpu and ran == 0 and counts.get("deselected"):
        figures["gpu-marked tests"] = (f"{figure} (no CUDA)", NA_ON_CPU)   # pytest exits 5: nothing ran
        return
    if error is not None:
        figures["gpu-marked tests"] = (f"{figure}; {error}", FAIL)
        return
    figures["gpu-marked tests"] = (f"{figure} in {len(files)} files", verdict(ran > 0 and counts.get("passed") == ran))


def throughput_row(precision: str, strength: float) -> str:
    return f"trial ÷ plain loop, {precision}, augment {strength:g}"


def throughput(ctx: Context, log: Path, figures: Figures) -> None:
    """benchmarks/gpu_throughput.py on this device: each setting's images/s against the plain loop's."""
    result = ctx.work / "throughput.json"
    s = ctx.sizes
    run_logged([sys.executable, str(ROOT / "benchmarks" / "gpu_throughput.py"), "--data", str(ctx.data),
                "--image-size", str(s.image_size), "--model", s.model, "--batch-size", str(s.batch_size),
                "--epochs", str(s.throughput_epochs), "--json", str(result)], log, ctx.cap("throughput"))
    measured = json.loads(result.read_text())
    settings = {(m["precision"], m["setting"]): m for m in measured["settings"]}
    for precision in PRECISIONS:
        for strength, target in THROUGHPUT_TARGETS:
            entry = settings.get((precision, f"trial, augment {strength:g}"))
            if entry is None:
                figures[throughput_row(precision, strength)] = (
                    f"not measured (default precision {measured['default_precision']})", NA_ON_CPU if ctx.cpu else FAIL)
            else:
                figures[throughput_row(precision, strength)] = (
                    f"{entry['vs_plain_loop']:.2f} ({entry['images_per_s']:.0f} images/s)",
                    verdict(entry["vs_plain_loop"] >= target))


def dmon_figures(text: str) -> tuple[float, float, int]:
    """From `nvidia-smi dmon -s u` output: mean SM % and the share of seconds at 0 % SM, both between the first
    and the last busy second (so Ray's start and the last trial's end are not counted), and that window's length."""
    column, samples = None, []
    for line in text.splitlines():
        tokens = line.split()
        if line.startswith("#") and "sm" in tokens:
            column = tokens.index("sm") - 1     # the header's '#' is no column
        elif column is not None and tokens and not line.startswith("#") and len(tokens) > column:
            samples.append(int(tokens[column]) if tokens[column].isdigit() else 0)
    busy = [i for i, sm in enumerate(samples) if sm > 0]
    if not busy:
        return 0.0, 1.0, len(samples)
    window = samples[busy[0] : busy[-1] + 1]
    return sum(window) / len(window), sum(sm == 0 for sm in window) / len(window), len(window)


def stop(process: subprocess.Popen) -> None:
    """End a monitor this script started: SIGTERM, then SIGKILL if it has not ended within 5 s."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def search_command(ctx: Context, task: str, name: str, trials: int, epochs: int, *options: str) -> list[str]:
    """`raysearch run TASK` on the acceptance data, results under --work, on this script's Ray instance."""
    return [sys.executable, "-m", "raysearch", "run", task, "--data", str(ctx.data), "--image-size",
            str(ctx.sizes.image_size), "--trials", str(trials), "--max-epochs", str(epochs), "--results",
            str(ctx.work / "results"), "--name", name, "--address", str(ctx.address), "--quiet", *options]


def smoke_space(ctx: Context, task: str) -> list[str]:
    """With --cpu-smoke: `--space` of a tiny VGG for `task`; else nothing (the task's default space)."""
    if not ctx.cpu:
        return []
    path = ctx.work / f"smoke-{task}.yaml"
    path.write_text(SMOKE_SPACE.format(task=task))
    return ["--space", str(path)]


def device_plan(output: str) -> str:
    """The 'Device plan: ...' line `raysearch run` starts with, without its prefix."""
    return next((line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("Device plan:")),
                "no device plan printed")


def packed_command(ctx: Context) -> list[str]:
    """The packed search: all its trials at once, none stopped early, sharing the GPU (on the CPU: as many as fit)."""
    s = ctx.sizes
    if ctx.cpu:
        options = smoke_space(ctx, "classification")
    else:
        space = ctx.work / "packed-space.yaml"
        space.write_text(PACKED_SPACE.format(model=s.model, batch_size=s.batch_size))
        options = ["--space", str(space), "--trials-per-gpu", str(s.packed_trials)]
    return search_command(ctx, "classification", "packed", s.packed_trials, s.packed_epochs, *options,
                          "--scheduler", "none", "--concurrency", str(s.packed_trials))


def real_search_command(ctx: Context, task: str, budget: int) -> list[str]:
    """A search of `task` for `budget` seconds, packed as --trials-per-gpu says, else as the device plan chooses."""
    s = ctx.sizes
    packing = [] if ctx.trials_per_gpu is None else ["--trials-per-gpu", str(ctx.trials_per_gpu)]
    return search_command(ctx, task, task, s.search_trials, s.search_epochs, *smoke_space(ctx, task),
                          "--time-budget", f"{budget}s", *packing)


def packed_search(ctx: Context, log: Path, figures: Figures) -> None:
    """The packed search under `nvidia-smi dmon`: how busy it keeps the GPU."""
    s = ctx.sizes
    command = packed_command(ctx)
    smi = shutil.which("nvidia-smi")
    failure = None
    with ExitStack() as stack:
        monitor = None
        if smi is not None:
            sink = stack.enter_context((ctx.out / DMON_FILE).open("w"))
            monitor = subprocess.Popen([smi, "dmon", "-s", "u", "-d", "1"], stdout=sink, stderr=subprocess.STDOUT)
        started = time.monotonic()
        try:
            output = run_logged(command, log, ctx.cap("packed-search"))
        except StepError as error:   # how busy the GPU was still counts
            failure = error
        finally:
            if monitor is not None:
                stop(monitor)
        seconds = time.monotonic() - started
    if smi is None:
        absent = ("nvidia-smi not found", NA_ON_CPU if ctx.cpu else FAIL)
        figures["GPU SM busy, mean"] = figures["GPU idle seconds, share"] = absent
    else:
        busy, idle, window = dmon_figures((ctx.out / DMON_FILE).read_text())
        figures["GPU SM busy, mean"] = (f"{busy:.0f} % over {window} s (first to last busy second)",
                                        verdict(busy >= SM_BUSY_TARGET))
        figures["GPU idle seconds, share"] = (f"{idle:.0%} of those {window} s", INFO)
    if failure is not None:
        raise failure
    figures["packed search"] = (f"{trials(s.packed_trials)} in {seconds:.0f} s; {device_plan(output)}", PASS)


def metric_text(metric: str, value: float) -> str:
    """85.54 % for an accuracy, 0.140 for a distance."""
    return f"{value:.2%}" if metric == "accuracy" else f"{value:.3f}"


def best_trial_figures(study: Path, task: str) -> Figures:
    """The best trial's test figures against the published ones (and on the leak-free test subset, for the record)."""
    import pandas as pd

    from raysearch.core.layout import StudyFolder

    best = StudyFolder(study).ranked_trials().iloc[0]
    figures = {}
    for metric, target, higher in PUBLISHED[task]:
        value, clean = best.get(f"test.{metric}"), best.get(f"test_clean.{metric}")
        if pd.isna(value):
            figures[f"{task} test {metric}"] = (f"no test.{metric} for trial {best['trial_id']}", FAIL)
            continue
        text = metric_text(metric, value)
        if not pd.isna(clean):
            text += f" (leak-free subset {metric_text(metric, clean)})"
        figures[f"{task} test {metric}"] = (f"{text}, trial {best['trial_id']}",
                                            verdict(value >= target if higher else value <= target))
    return figures


def published_rows(task: str) -> tuple[tuple[str, str], ...]:
    """The rows of `task`'s test figures, each with its published target."""
    return tuple((f"{task} test {metric}", f"{'≥' if higher else '≤'} {metric_text(metric, target)} (published)")
                 for metric, target, higher in PUBLISHED[task])


def real_search(task: str) -> Callable[[Context, Path, Figures], None]:
    """The step that searches `task` for its share of the minutes left, then evaluates the best trial."""

    def run(ctx: Context, log: Path, figures: Figures) -> None:
        import pandas as pd

        started = time.monotonic()
        share = ctx.left() / ctx.searches_left
        ctx.searches_left -= 1
        s = ctx.sizes
        run_cap = share - s.evaluate_s
        if run_cap < s.min_search_s:
            raise StepError(f"only {share:.0f} s left for it (at least {s.min_search_s + s.evaluate_s:.0f} s)")
        budget = max(round(run_cap - s.search_overhead_s), 5)
        output = run_logged(real_search_command(ctx, task, budget), log, run_cap)
        study = ctx.work / "results" / task
        ran = len(pd.read_parquet(study / "trials.parquet"))
        seconds = time.monotonic() - started
        figures[f"{task} search"] = (f"{trials(ran)} in {seconds:.0f} s (--time-budget {budget}s); "
                                     f"{device_plan(output)}", PASS)
        evaluate_cap = max(started + share - time.monotonic(), 1.0)
        run_logged([sys.executable, "-m", "raysearch", "evaluate", str(study), "--top", "1", "--quiet"], log,
                   evaluate_cap)
        figures.update(best_trial_figures(study, task))

    return run


STEPS = (
    Step("gpu-tests", (("gpu-marked tests", "all pass"),), gpu_tests),
    Step("throughput", tuple((throughput_row(p, a), f"≥ {t:g} of a plain PyTorch loop")
                             for p in PRECISIONS for a, t in THROUGHPUT_TARGETS), throughput),
    Step("packed-search", (("packed search", "runs, 4 trials on one GPU"),
                           ("GPU SM busy, mean", f"≥ {SM_BUSY_TARGET:.0f} %"),
                           ("GPU idle seconds, share", "reported")), packed_search, needs_ray=True),
    *(Step(task, ((f"{task} search", "runs to its end in its share of the minutes"), *published_rows(task)),
           real_search(task), needs_ray=True) for task in PUBLISHED),
)


def run_step(step: Step, ctx: Context, summary: Summary) -> bool:
    """Run one step, fill its rows (FAIL with the reason for those it did not fill); whether it ran to its end."""
    log = ctx.out / f"{step.name}.log"
    print(f"== {step.name} ({ctx.left():.0f} s left)", flush=True)
    started = time.monotonic()
    figures: Figures = {}
    error = None
    try:
        if step.needs_ray and ctx.address is None:
            raise StepError(ctx.ray_error)
        step.run(ctx, log, figures)
    except StepError as failure:
        error = str(failure)
    except Exception as failure:   # a bug in one step must not cost the others their minutes
        error = f"{type(failure).__name__}: {failure}"
        with log.open("a") as sink:
            sink.write(traceback.format_exc())
    for row in summary.rows:
        if row.step == step.name:
            row.figure, row.verdict = figures.get(row.name, (f"error: {error}" if error else "not reported", FAIL))
    print(f"   {step.name}: {time.monotonic() - started:.0f} s{f'; {error}' if error else ''}", flush=True)
    return error is None


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs"
    return f"CPU only, {os.cpu_count()} CPUs"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"),
                        help="folder for the logs and summary.txt (default: $OUT)")
    parser.add_argument("--work", type=Path, help="folder for the studies (default: a new temporary folder)")
    parser.add_argument("--data", type=Path, help="the bone-fracture split (default: .gpu/bone-fracture-labelled, "
                        "else ../shared/datasets/bone-fracture-yolo); --cpu-smoke uses tiny phantom X-rays")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run (default: 450)")
    parser.add_argument("--trials-per-gpu", type=int, help="packing of the real searches (default: the device plan's)")
    parser.add_argument("--cpu-smoke", action="store_true", help="every step at toy size on the CPU")
    parser.add_argument("--steps", help="run only these steps, comma-separated (default: all: "
                        f"{','.join(step.name for step in STEPS)}); the others' rows say skipped")
    return parser.parse_args(argv)


def chosen_steps(args: argparse.Namespace) -> list[str]:
    """The names of the steps to run (all without --steps); exits with one line naming an unknown one."""
    names = [step.name for step in STEPS]
    if args.steps is None:
        return names
    chosen = [name.strip() for name in args.steps.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in names]
    if unknown or not chosen:
        sys.exit(f"gpu_acceptance: --steps: unknown step {', '.join(unknown) or '(none given)'}; "
                 f"choose from {', '.join(names)}")
    return chosen


def checked_data(args: argparse.Namespace) -> Path | None:
    """The dataset of a GPU run (None for the smoke run, which writes its own); exits with one line if absent."""
    if args.cpu_smoke:
        if args.data is not None or args.trials_per_gpu is not None:
            sys.exit("gpu_acceptance: --data and --trials-per-gpu are for the GPU run, not --cpu-smoke")
        return None
    data = args.data or next((p for p in (BUNDLED_DATA, SHARED_DATA) if p.is_dir()), BUNDLED_DATA)
    if not (data / "data.yaml").is_file():
        sys.exit(f"gpu_acceptance: {data}: no data.yaml (run ../shared/tools/gpu-bundle, or give --data)")
    return data


def main(argv: list[str] | None = None) -> int:
    """Run every step within the budget, rewriting summary.txt after each; print the table at the end."""
    args = parse_args(argv)
    if args.out is None:
        sys.exit("gpu_acceptance: --out not given and $OUT is not set")
    if args.trials_per_gpu is not None and args.trials_per_gpu < 1:
        sys.exit(f"gpu_acceptance: --trials-per-gpu must be at least 1, got {args.trials_per_gpu}")
    data = checked_data(args)
    steps = chosen_steps(args)
    deadline = time.monotonic() + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-acceptance-"))
    work.mkdir(parents=True, exist_ok=True)
    if data is None:
        from raysearch.data.phantom import PhantomSpec, write_phantom

        data = write_phantom(work / "phantom", PhantomSpec(train=24, val=8, test=8, image_size=32), progress=False)
    sizes = SMOKE_SIZES if args.cpu_smoke else GPU_SIZES
    ctx = Context(args.cpu_smoke, args.out, work, data, sizes, deadline, args.trials_per_gpu)
    started = datetime.now(UTC)
    mode = "CPU smoke run (toy sizes: the verdicts mean nothing)" if args.cpu_smoke else "GPU acceptance run"
    summary = Summary(f"{mode}, {started:%Y-%m-%d %H:%M} UTC, {device_name()}; data {data}; studies under {work}",
                      [Row(step.name, name, target) for step in STEPS for name, target in step.rows])
    complete = True
    with ExitStack() as stack:
        for step in STEPS:
            if step.name not in steps:
                for row in summary.rows:
                    if row.step == step.name:
                        row.figure, row.verdict = "left out (--steps)", SKIPPED
                continue
            if step.needs_ray and ctx.address is None:
                start_ray(stack, ctx)
            complete &= run_step(step, ctx, summary)
            write_summary(summary, ctx.out)
    summary.header += f"; {(datetime.now(UTC) - started).total_seconds():.0f} s in all"
    write_summary(summary, ctx.out)
    print(summary.render(), flush=True)
    return 0 if complete else 1


def start_ray(stack: ExitStack, ctx: Context) -> None:
    """Start the local Ray instance of every search (stopped when the run ends) and set `ctx.address`, or, when it
    does not start, `ctx.ray_error` (tried once: the search steps then fail with that reason)."""
    import ray

    from raysearch.search.connection import connected

    if ctx.ray_error != Context.ray_error:
        return
    try:
        stack.enter_context(connected(None))
    except Exception as failure:
        ctx.ray_error = f"Ray did not start: {type(failure).__name__}: {str(failure).splitlines()[0][:160]}"
        return
    ctx.address = ray.get_runtime_context().gcs_address


def write_summary(summary: Summary, out: Path) -> None:
    from raysearch.core.files import write_text_atomic

    write_text_atomic(summary.render(), out / SUMMARY_FILE)


if __name__ == "__main__":
    sys.exit(main())
