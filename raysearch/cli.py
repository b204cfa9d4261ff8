"""`raysearch` command line: a thin layer over raysearch.study.run. Errors are one line and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

from raysearch.errors import RaysearchError

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
    run = commands.add_parser("run", help="run a hyperparameter search study", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    for spec_field in spec_fields():
        add_spec_flag(run, spec_field)
    console = run.add_mutually_exclusive_group()
    console.add_argument("--quiet", action="store_true", help="no progress bars, no per-trial lines, no Ray output: "
                         "raysearch's summary only")
    console.add_argument("--verbose", action="store_true", help="Ray Tune's own console instead of raysearch's "
                         "per-trial lines: its status tables, every trial's config and result boxes, the workers' "
                         "output and Ray's, Tune's and Optuna's log lines (default: one line per trial result with its "
                         "ETA, one when a trial ends)")


def spec_fields(names: Sequence[str] | None = None) -> list[Field[Any]]:
    """The StudySpec fields that are `raysearch run` flags (or those of `names`), in their order."""
    from raysearch.study.spec import StudySpec

    found = [f for f in fields(StudySpec) if "help" in f.metadata]
    return found if names is None else [f for f in found if f.name in names]


def add_spec_flag(parser: argparse.ArgumentParser, spec_field: Field[Any], *, recorded: bool = False) -> None:
    """One StudySpec field as an argument of `parser`: its flag, default, allowed values and help; `recorded`:
    for a command that continues a study, whose default is what the study recorded (None here)."""
    from raysearch.study.spec import flag_name

    meta = spec_field.metadata
    default = os.environ.get(meta["env"]) or spec_field.default if "env" in meta else spec_field.default
    note = " (default: the study's)" if recorded else _default_note(spec_field)
    default = None if recorded else default
    options: dict[str, Any] = {"help": meta["help"] + note}
    if meta.get("positional"):
        parser.add_argument(spec_field.name, **options)
        return
    if "action" in meta:
        options["action"] = meta["action"]
    if meta.get("action") == "append":
        options["default"] = []
    elif meta.get("action") is None:
        options["default"] = default
    for key in ("choices", "metavar"):
        if key in meta:
            options[key] = meta[key]
    if "type" in meta:
        options["type"] = _gpus if meta["type"] == "gpus" else meta["type"]
    parser.add_argument(flag_name(spec_field), dest=spec_field.name, **options)


def _default_note(spec_field: Field[Any]) -> str:
    """` (default: X)` for a field whose default is a value to state (not None, a flag switch or a list)."""
    meta, default = spec_field.metadata, spec_field.default
    if meta.get("positional") or "action" in meta or default is None or "default:" in meta["help"]:
        return ""
    return f" (default: {default})"


def _gpus(value: str) -> float | str:
    """--gpus-per-worker: auto or a number."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or a number, got {value!r}") from None


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """--address and --wait-for-nodes for a command that continues a study (default: what the study recorded)."""
    address, wait = spec_fields(("address", "wait_for_nodes"))
    add_spec_flag(parser, address)
    add_spec_flag(parser, wait, recorded=True)


def _add_resume(commands: argparse._SubParsersAction) -> None:
    resume = commands.add_parser("resume", help="continue an interrupted study where it stopped")
    resume.add_argument("study", type=Path, help="study folder (RESULTS/STUDY_NAME)")
    _add_cluster_options(resume)
    resume.add_argument("--trust", action="store_true",
                        help="resume even if the study's Ray Tune state was not signed by your key (a folder from "
                        "someone else): its pickles are loaded and can run any code, so only for authors you trust")
    resume.add_argument("--quiet", action="store_true", help="no progress bars, no per-trial lines, no Ray output: "
                        "raysearch's summary only (default: one line per trial result with its ETA, one when a trial "
                        "ends)")


def _add_data(commands: argparse._SubParsersAction) -> None:
    from raysearch.data.phantom import PhantomSpec

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    phantom = data.add_parser("phantom", help="write the built-in phantom X-ray dataset")
    phantom.add_argument("out", type=Path, help="output folder")
    for spec_field in fields(PhantomSpec):
        what = "image size in pixels" if spec_field.name == "image_size" else (
            "seed of the generator" if spec_field.name == "seed" else f"{spec_field.name} images")
        phantom.add_argument(f"--{spec_field.name.replace('_', '-')}", type=int, default=spec_field.default,
                             help=f"{what} (default: %(default)s)")
    audit = data.add_parser("audit", help="report what a dataset holds and what is wrong with it (audit.parquet)")
    audit.add_argument("path", type=Path, help="dataset folder, data.yaml or labels .csv")
    audit.add_argument("--out", type=Path, help="output folder (default: raysearch-results/audit/DATASET_NAME)")
    audit.add_argument("--quiet", action="store_true", help="no progress bar")
    for spec_field in spec_fields(("format", "columns", "split_ratios")):
        add_spec_flag(audit, spec_field)


def _add_results(commands: argparse._SubParsersAction) -> None:
    from raysearch.core.layout import DEFAULT_RESULTS
    from raysearch.core.options import NO_TTA, RESAMPLES, TTA_MODES

    evaluate = commands.add_parser("evaluate", help="evaluate a finished study's best trials on the test split")
    evaluate.add_argument("study", type=Path, help="study folder (RESULTS/STUDY_NAME)")
    evaluate.add_argument("--top", type=int, default=1, help="evaluate the K best trials (default: %(default)s)")
    evaluate.add_argument("--repeats", type=int, default=1,
                          help="1: reload each trial's best checkpoint; R > 1: retrain with R seeds, mean ± std")
    evaluate.add_argument("--max-epochs", type=int, help="epochs per retraining (default: the study's)")
    add_spec_flag(evaluate, *spec_fields(("address",)))
    evaluate.add_argument("--positive-class", help="two-class studies: the positive class's name, whose operating "
                          "point (threshold chosen on validation) is reported (default: the second class)")
    evaluate.add_argument("--target-sensitivity", type=float,
                          help="choose the threshold reaching this validation sensitivity (default: Youden's J)")
    evaluate.add_argument("--resamples", type=int, default=RESAMPLES,
                          help="bootstrap resamples of the test images, for the 95 %% intervals (default: %(default)s)")
    evaluate.add_argument("--ensemble", type=int, default=0,
                          help="also evaluate the mean of the K best trials as one model (default: none)")
    evaluate.add_argument("--tta", default=NO_TTA, choices=TTA_MODES,
                          help="test-time augmentation of the ensemble (default: %(default)s)")
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
    export.add_argument("--ensemble", type=int, default=0,
                        help="export the mean of the K best trials as one model instead (replaces STUDY/model)")
    export.add_argument("--tta", default=NO_TTA, choices=TTA_MODES,
                        help="test-time augmentation of the exported ensemble (default: %(default)s)")
    dashboard = commands.add_parser("dashboard", help="open the Streamlit dashboard on a results folder")
    dashboard.add_argument("results", type=Path, nargs="?", default=Path(DEFAULT_RESULTS),
                           help="results folder (default: %(default)s)")
    dashboard.add_argument("--port", type=int, default=8501, help="port to listen on (default: %(default)s)")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default: %(default)s, this machine only; 0.0.0.0: every "
                           "interface, so anyone who reaches the port sees the results)")
    dashboard.add_argument("--ray-dashboard", metavar="URL",
                           help="a Ray dashboard to link when it answers, e.g. http://127.0.0.1:8265 (only this, "
                           "$RAY_DASHBOARD_URL, $RAY_ADDRESS's host and localhost are ever probed)")
    dashboard.add_argument("--verbose", action="store_true",
                           help="Streamlit's own log lines too (default: only its URL lines and warnings)")


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


def reference() -> str:
    """The CLI reference (docs/cli.md) in Markdown: every command with each argument and its help (defaults
    included), from the same parser `raysearch` runs with (so from the StudySpec fields for `run`)."""
    lines = ["# Command-line reference", "",
             "Generated from the parser by `python -m raysearch.cli > docs/cli.md`; `tests/test_cli.py` checks it is "
             "current. `raysearch COMMAND --help` prints the same.", ""]
    for name, summary, command in _commands(build_parser()):
        lines += [f"## `raysearch {name}`", "", f"{summary}.", "", "| argument | meaning |", "| --- | --- |"]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            shown = ", ".join(f"`{option}`" for option in action.option_strings) or f"`{action.dest.upper()}`"
            meaning = (action.help or "").replace("%(default)s", str(action.default)).replace("|", "\\|")
            if action.choices:
                meaning += " (one of " + ", ".join(f"`{c}`" for c in action.choices) + ")"
            lines.append(f"| {shown} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, str, argparse.ArgumentParser]]:
    """Every leaf command of `parser`: its full name (`data audit`), its one-line help and its parser."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                nested = _commands(sub, f"{prefix}{name} ")
                found += nested or [(f"{prefix}{name}", summaries.get(name) or "", sub)]
    return found


def _run(args: argparse.Namespace) -> None:
    from raysearch.study.run import run_study
    from raysearch.study.spec import StudySpec

    spec = StudySpec(**{f.name: getattr(args, f.name) for f in spec_fields()})
    run_study(spec, progress=not args.quiet, verbose=args.verbose)


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

    results = DEFAULT_RESULTS if args.out is None else args.out  # where the image index is kept
    audit = audit_dataset(args.path, args.format, split_ratios=SplitRatios.parse(args.split_ratios),
                          columns=args.columns, results=results,
                          progress=not args.quiet)
    print(format_audit(audit))
    written = write_audit(audit, args.out or Path(DEFAULT_RESULTS) / AUDIT_DIR / audit.name)
    print(f"Written: {written}")
    if audit.fatal:
        raise DataError(f"{args.path}: training is impossible: {'; '.join(audit.fatal)}")


def _evaluate(args: argparse.Namespace) -> None:
    from raysearch.study.evaluate import evaluate_study

    evaluate_study(args.study, top=args.top, repeats=args.repeats, max_epochs=args.max_epochs, address=args.address,
                   progress=not args.quiet, positive_class=args.positive_class,
                   target_sensitivity=args.target_sensitivity, resamples=args.resamples,
                   ensemble=args.ensemble, tta=args.tta)


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

    for name, path in export_study(args.study, parse_formats(args.format), trial_id=args.trial,
                                    ensemble=args.ensemble, tta=args.tta).items():
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
    private by default: bound to --host (localhost) and with Streamlit's usage statistics off; Streamlit's log
    below warnings (its server's start line) only with --verbose."""
    from raysearch.core.bundled import dashboard_app
    from raysearch.errors import ConfigError

    if not args.results.is_dir():
        raise ConfigError(f"{args.results}: no such results folder")
    app = dashboard_app()
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", args.host,
               "--server.port", str(args.port), "--browser.gatherUsageStats", "false",
               "--client.toolbarMode", "minimal", "--logger.level", "info" if args.verbose else "warning",
               "--", "--results", str(args.results.resolve())]
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


if __name__ == "__main__":
    print(reference())
