"""`raysearch` command line: a thin layer over raysearch.study.run. Errors are one line and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from raysearch.errors import RaysearchError
from raysearch.search.choices import SCHEDULERS, SEARCHERS

EXAMPLES = """examples:
  raysearch run multitask                                 # built-in phantom X-rays, local Ray
  raysearch run classification --data ../shared/datasets/bone-fracture-yolo --trials 20
  raysearch run classification --data ../shared/datasets/bone-fracture-yolo --splits grouped  # no source leaks
  raysearch run classification --searcher random --scheduler none --time-budget 2h --trials 100
  raysearch run multitask --address ray://head:10001 --workers-per-trial 2 --gpus-per-worker 0.5
  raysearch resume raysearch-results/multitask-1a2b3c4d   # after the driver or the machine stopped
  raysearch data phantom ./phantom --train 600
  raysearch data audit ../shared/datasets/bone-fracture-yolo  # counts, problems, duplicates -> audit.parquet
  raysearch evaluate raysearch-results/multitask-1a2b3c4d --top 3 --repeats 5
  raysearch predict raysearch-results/multitask-1a2b3c4d/model xray1.png new-xrays/ 'more/*.jpg' --out labelled/
  raysearch export raysearch-results/multitask-1a2b3c4d --format onnx,torchscript
  raysearch dashboard raysearch-results
  raysearch weights fetch resnet18 efficientnet_b0 --encoder resnet50   # fill the HF cache once
"""


def _add_run(commands: argparse._SubParsersAction) -> None:
    from raysearch.data.splits import SPLIT_POLICIES

    run = commands.add_parser("run", help="run a hyperparameter search study", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("task", help="classification, regression, multitask or segmentation")
    run.add_argument("--data", help="dataset folder or data.yaml (default: built-in phantom X-rays)")
    run.add_argument("--space", help="search-space YAML (default: search_spaces/TASK.yaml)")
    run.add_argument("--name", help="study name (default: derived from task, space and settings)")
    run.add_argument("--results", default="raysearch-results", help="results root folder (default: %(default)s)")
    run.add_argument("--trials", type=int, default=8, help="number of trials (default: %(default)s)")
    run.add_argument("--max-epochs", type=int, default=6, help="epochs per trial at most (default: %(default)s)")
    run.add_argument("--image-size", type=int, default=64, help="input size in pixels (default: %(default)s)")
    run.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial (DDP)")
    run.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (default: %(default)s)")
    run.add_argument("--gpus-per-worker", type=_gpus, default="auto",
                     help="GPUs per worker; fractions share a GPU (default: auto: 1 if the cluster has GPUs, else 0)")
    run.add_argument("--trials-per-gpu", type=int, metavar="K",
                     help="pack K trials on each GPU (each worker takes 1/K GPU), for small models")
    run.add_argument("--concurrency", type=int, help="trials at once (default and cap: what the cluster fits)")
    run.add_argument("--seed", type=int, default=0, help="seed of the sampler and of training (default: 0)")
    run.add_argument("--grace-period", type=int, default=1,
                     help="ASHA: epochs every trial runs before it can be stopped (default: %(default)s)")
    run.add_argument("--reduction-factor", type=int, default=2,
                     help="ASHA: keep the best 1/N of trials at each rung (default: %(default)s)")
    run.add_argument("--searcher", choices=SEARCHERS,
                     help="Optuna sampler: tpe, random or qmc (default: the space's `searcher:`, else tpe)")
    run.add_argument("--startup-trials", type=int, metavar="N",
                     help="tpe: trials sampled at random before TPE models the results "
                     "(default: a third of --trials, 2 to 10)")
    run.add_argument("--scheduler", choices=SCHEDULERS,
                     help="Ray Tune scheduler that stops trials early: asha, hyperband, median or none "
                     "(default: the space's `scheduler:`, else asha)")
    run.add_argument("--time-budget", metavar="DURATION",
                     help="stop sampling new trials after this long (2h, 30m, 90s); running trials finish")
    run.add_argument("--epoch-budget", type=int, metavar="N",
                     help="stop sampling new trials once the trials ran N epochs in all; running trials finish")
    run.add_argument("--log", action="append", default=[], metavar="BACKEND",
                     help="track the study in mlflow, wandb or tensorboard (repeat the flag or give a comma list); "
                     "MLflow goes to $MLFLOW_TRACKING_URI, else to STUDY/mlflow/")
    _add_cluster_options(run, wait_default=900.0)
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_dataset_options(run)
    run.add_argument("--splits", choices=SPLIT_POLICIES,
                     help="published: the dataset's splits, tested also on their leak-free subset; deduplicated: "
                     "drop val/test images whose source is in train; grouped: split whole source groups "
                     "(seeded, stratified by class) (default: published for a dataset that ships splits, else "
                     "grouped)")
    run.add_argument("--no-test-split", action="store_true",
                     help="a dataset without test images: keep none (default: carve one from train, by source)")
    run.add_argument("--on-error", choices=("skip", "error"), default="skip",
                     help="a corrupt image or malformed label: skip it (listed in data_issues.parquet) or stop")
    run.add_argument("--empty-labels", choices=("skip", "background"), default="skip",
                     help="images with empty label files: skip them (counted) or use them as class 'no fracture'")
    run.add_argument("--binarise-masks", action="store_true",
                     help="accept masks with values other than 0/1/255 (e.g. class labels): nonzero = foreground")


def _gpus(value: str) -> float | str:
    """--gpus-per-worker: auto or a number."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or a number, got {value!r}") from None


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("yolo", "class-folders", "image-mask"),
                        help="dataset format (default: detected from the folder)")
    parser.add_argument("--split-ratios", default="0.8,0.1,0.1",
                        help="TRAIN,VAL,TEST shares for datasets without split folders (default: %(default)s)")


def _add_cluster_options(parser: argparse.ArgumentParser, wait_default: float | None) -> None:
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                        help="Ray cluster to join (default: $RAY_ADDRESS, else start a local one)")
    parser.add_argument("--wait-for-nodes", type=float, default=wait_default, metavar="SECONDS",
                        help="on a cluster with an autoscaler, how long to wait for the first node that fits a "
                        "trial (default: " + ("%(default)g s" if wait_default else "the study's") + ")")


def _add_resume(commands: argparse._SubParsersAction) -> None:
    resume = commands.add_parser("resume", help="continue an interrupted study where it stopped")
    resume.add_argument("study", type=Path, help="study folder (RESULTS/STUDY_NAME)")
    _add_cluster_options(resume, wait_default=None)
    resume.add_argument("--trust", action="store_true",
                        help="resume even if the study's Ray Tune state was not signed by your key (a folder from "
                        "someone else): its pickles are loaded and can run any code, so only for authors you trust")
    resume.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_data(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    phantom = data.add_parser("phantom", help="write the built-in phantom X-ray dataset")
    phantom.add_argument("out", type=Path, help="output folder")
    phantom.add_argument("--train", type=int, default=480)
    phantom.add_argument("--val", type=int, default=120)
    phantom.add_argument("--test", type=int, default=120)
    phantom.add_argument("--image-size", type=int, default=128)
    phantom.add_argument("--seed", type=int, default=0)
    audit = data.add_parser("audit", help="report what a dataset holds and what is wrong with it (audit.parquet)")
    audit.add_argument("path", type=Path, help="dataset folder or data.yaml")
    audit.add_argument("--out", type=Path, help="output folder (default: raysearch-results/audit/DATASET_NAME)")
    audit.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_dataset_options(audit)


def _add_results(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="evaluate a finished study's best trials on the test split")
    evaluate.add_argument("study", type=Path, help="study folder (RESULTS/STUDY_NAME)")
    evaluate.add_argument("--top", type=int, default=1, help="evaluate the K best trials (default: %(default)s)")
    evaluate.add_argument("--repeats", type=int, default=1,
                          help="1: reload each trial's best checkpoint; R > 1: retrain with R seeds, mean ± std")
    evaluate.add_argument("--max-epochs", type=int, help="epochs per retraining (default: the study's)")
    evaluate.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                          help="Ray cluster that retrains (default: $RAY_ADDRESS, else a local Ray)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    predict = commands.add_parser("predict", help="label new radiographs with an exported model")
    predict.add_argument("model", type=Path, help="exported model folder (STUDY/model) or a study folder")
    predict.add_argument("images", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    predict.add_argument("--out", type=Path, default=Path("raysearch-predictions"),
                         help="folder for overlay PNGs and predictions.json (default: %(default)s)")
    export = commands.add_parser("export", help="write a study's model as ONNX and TorchScript into STUDY/model")
    export.add_argument("study", type=Path, help="study folder (RESULTS/STUDY_NAME) or its exported model folder")
    export.add_argument("--format", default="onnx,torchscript",
                        help="comma-separated: onnx, torchscript (default: %(default)s)")
    export.add_argument("--trial", help="export this trial instead of the best (replaces STUDY/model)")
    dashboard = commands.add_parser("dashboard", help="open the Streamlit dashboard on a results folder")
    dashboard.add_argument("results", type=Path, nargs="?", default=Path("raysearch-results"),
                           help="results folder (default: %(default)s)")
    dashboard.add_argument("--port", type=int, default=8501, help="port to listen on (default: %(default)s)")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default: %(default)s, this machine only; 0.0.0.0: every "
                           "interface, so anyone who reaches the port sees the results)")
    dashboard.add_argument("--ray-dashboard", metavar="URL",
                           help="a Ray dashboard to link when it answers, e.g. http://127.0.0.1:8265 (only this, "
                           "$RAY_DASHBOARD_URL, $RAY_ADDRESS's host and localhost are ever probed)")


def _add_weights(commands: argparse._SubParsersAction) -> None:
    weights = commands.add_parser("weights", help="pretrained weights").add_subparsers(dest="weights_command",
                                                                                        required=True)
    fetch = weights.add_parser("fetch", help="download pretrained weights into the Hugging Face cache (HF_HOME) once, "
                               "e.g. on a cluster's shared storage")
    fetch.add_argument("models", nargs="*", metavar="MODEL",
                       help="timm models, as the `model` hyperparameter names them (resnet18, efficientnet_b0, ...)")
    fetch.add_argument("--encoder", action="append", default=[], metavar="ENCODER",
                       help="a segmentation encoder, as the `encoder` hyperparameter names it (resnet50, "
                       "mobilenet_v2, tu-resnet18, ...); repeat for several")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (built on demand, never at import time)."""
    parser = argparse.ArgumentParser(prog="raysearch", description="Distributed hyperparameter search for X-ray "
                                     "models on Ray Tune + Optuna.", epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    _add_resume(commands)
    _add_data(commands)
    _add_results(commands)
    _add_weights(commands)
    return parser


def _run(args: argparse.Namespace) -> None:
    from raysearch.study.run import run_study
    from raysearch.study.spec import StudySpec

    spec = StudySpec(
        task=args.task, data=args.data, space=args.space, name=args.name, results=args.results, trials=args.trials,
        max_epochs=args.max_epochs, image_size=args.image_size, workers_per_trial=args.workers_per_trial,
        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker, trials_per_gpu=args.trials_per_gpu,
        concurrency=args.concurrency,
        seed=args.seed, grace_period=args.grace_period, reduction_factor=args.reduction_factor,
        address=args.address, wait_for_nodes=args.wait_for_nodes, format=args.format,
        on_error=args.on_error, empty_labels=args.empty_labels, split_ratios=args.split_ratios,
        binarise_masks=args.binarise_masks, log=tuple(args.log),
        splits_policy=args.splits, test_split=not args.no_test_split,
        searcher=args.searcher, startup_trials=args.startup_trials, scheduler=args.scheduler,
        time_budget=args.time_budget, epoch_budget=args.epoch_budget,
    )
    run_study(spec, progress=not args.quiet)


def _resume(args: argparse.Namespace) -> None:
    from raysearch.study.run import resume_study

    resume_study(args.study, address=args.address, wait_for_nodes=args.wait_for_nodes, trust=args.trust,
                 progress=not args.quiet)


def _data(args: argparse.Namespace) -> None:
    if args.data_command == "audit":
        _audit(args)
        return
    from raysearch.data.phantom import PhantomSpec, write_phantom

    spec = PhantomSpec(train=args.train, val=args.val, test=args.test, image_size=args.image_size, seed=args.seed)
    print(write_phantom(args.out, spec))


def _audit(args: argparse.Namespace) -> None:
    from raysearch.core.layout import AUDIT_DIR, DEFAULT_RESULTS
    from raysearch.data.audit import audit_dataset, format_audit, write_audit
    from raysearch.data.records import SplitRatios
    from raysearch.errors import DataError

    audit = audit_dataset(args.path, args.format, split_ratios=SplitRatios.parse(args.split_ratios),
                          progress=not args.quiet)
    print(format_audit(audit))
    written = write_audit(audit, args.out or Path(DEFAULT_RESULTS) / AUDIT_DIR / audit.name)
    print(f"Written: {written}")
    if audit.fatal:
        raise DataError(f"{args.path}: training is impossible: {'; '.join(audit.fatal)}")


def _evaluate(args: argparse.Namespace) -> None:
    from raysearch.study.evaluate import evaluate_study

    evaluate_study(args.study, top=args.top, repeats=args.repeats, max_epochs=args.max_epochs, address=args.address,
                   progress=not args.quiet)


def _predict(args: argparse.Namespace) -> int:
    """Label every image; unreadable ones are listed on stderr and the others go on. Exit code 0 when every
    image was labelled, 1 when some could not be read, 2 (an error) when none could."""
    from raysearch.core.layout import MODEL_DIR
    from raysearch.errors import DataError
    from raysearch.inference.predict import PREDICTIONS_JSON, load_model

    model = args.model / MODEL_DIR if (args.model / MODEL_DIR).is_dir() else args.model
    found = load_model(model).predict(args.images, out=args.out)
    failed = [p for p in found if not p.ok]
    if len(failed) == len(found):
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise DataError(f"no image labelled: {failed[0].error}{more}")
    for prediction in found:
        if prediction.ok:
            label = f"{prediction.class_name} ({prediction.probability:.1%})" if prediction.class_name else "-"
            polygon = " ".join(f"{v:.3f}" for v in prediction.polygon) if prediction.polygon else "-"
            print(f"{prediction.image}: class {label}; polygon {polygon}; overlay {prediction.overlay}")
        else:
            print(f"raysearch: skipped {prediction.error}", file=sys.stderr)
    print(f"Labelled {len(found) - len(failed)} of {len(found)} images. Predictions: {args.out / PREDICTIONS_JSON}")
    return 1 if failed else 0


def _export(args: argparse.Namespace) -> None:
    from raysearch.inference.export import export_study, parse_formats

    for name, path in export_study(args.study, parse_formats(args.format), trial_id=args.trial).items():
        print(f"{name}: {path}")


def _weights(args: argparse.Namespace) -> None:
    from raysearch.errors import ConfigError
    from raysearch.models.hub import fetch_weights

    if not args.models and not args.encoder:
        raise ConfigError("weights fetch: name at least one MODEL or --encoder")
    for line in fetch_weights(args.models, args.encoder):
        print(line)


def _dashboard(args: argparse.Namespace) -> None:
    """Replace this process with the Streamlit server (so stopping `raysearch dashboard` stops the server),
    private by default: bound to --host (localhost) and with Streamlit's usage statistics off."""
    from raysearch.core.bundled import dashboard_app
    from raysearch.errors import ConfigError

    if not args.results.is_dir():
        raise ConfigError(f"{args.results}: no such results folder")
    app = dashboard_app()
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", args.host,
               "--server.port", str(args.port), "--browser.gatherUsageStats", "false",
               "--client.toolbarMode", "minimal", "--", "--results", str(args.results.resolve())]
    if args.ray_dashboard:
        command += ["--ray-dashboard", args.ray_dashboard]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `raysearch` console script."""
    args = build_parser().parse_args(argv)
    handlers = {"run": _run, "resume": _resume, "data": _data, "evaluate": _evaluate, "predict": _predict,
                "export": _export, "dashboard": _dashboard, "weights": _weights}
    try:
        code = handlers[args.command](args)
    except RaysearchError as error:
        print(f"raysearch: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("raysearch: interrupted", file=sys.stderr)
        return 130
    return code or 0
