"""``python -m core <command>``: the contract the app, benchmarks and search use (options; ``core.commands`` runs them).

With ``--json`` the last line printed on stdout is one JSON object. A bad argument, dataset or weights
request exits with code 2 and one sentence on stderr. Every argparse line of SceneLab is in this module;
the run options are generated from ``RunConfig``'s field metadata (``core.fields``), so a new run setting
appears here by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from core.commands import tune_request
from core.config import AUGMENT_SETTINGS, RUN_SETTINGS, SHARED_SETTINGS, AugmentConfig, entry_defaults
from core.errors import ConfigError, SceneLabError, os_error_phrase
from core.explain.methods import EXPLAIN_METHODS, PROJECTION_METHODS
from core.fields import Setting, flag_of, parse_text
from core.search.objective import AUTO_REPEATS_CHEAP
from core.search.request import DEFAULT_TRIALS, StudyRequest
from core.search.samplers import PRUNERS, SAMPLERS
from core.study.plan import DEFAULT_GRID_SAMPLE, DEFAULT_TRAINED_BLOCKS, MODES, SMALL

logger = logging.getLogger("core")
DATA_HELP = (
    "dataset folder <root>/{train,test}/<class>/ (default: SCENELAB_DATA, else the bundled MIT_split at 64 px, "
    "unpacked once into the artifacts folder)"
)


class _Parser(argparse.ArgumentParser):
    """argparse that answers a bad argument with one sentence and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"scenelab: {message}; run `python -m core {self.prog.split()[-1]} --help` for the options.\n")
        raise SystemExit(2)


def _text_type(name: str, info: Setting, prefix: str) -> Any:
    """argparse's ``type`` for a setting: :func:`core.fields.parse_text`, the parser links use too."""

    def parse(raw: str) -> Any:
        try:
            return parse_text(name, info, raw, prefix)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None

    parse.__name__ = info.kind  # argparse names the type in its own messages
    return parse


def _add_setting(
    p: argparse.ArgumentParser, name: str, info: Setting, default: Any, *, prefix: str = "", help: str | None = None
) -> None:
    """One option for one run setting, from its metadata; ``dest`` is the field (``aug_<field>``). Every option
    named like a setting is made here (tests/test_architecture.py checks), so its flag, type and parser are
    the declaration's; ``help`` replaces the setting's own where the option means something narrower."""
    dest = f"{prefix.replace('-', '_')}{name}"
    kwargs: dict[str, Any] = {"dest": dest, "default": default, "help": help or f"{info.label}: {info.help}"}
    if info.kind == "bool":
        kwargs.update(type=_text_type(name, info, prefix), nargs="?", const=True, metavar="{true,false}")
    elif info.kind == "choice":
        kwargs.update(choices=info.choices)
    elif info.kind in ("int", "float"):
        kwargs["type"] = _text_type(name, info, prefix)
    if name == "early_stopping_patience":
        kwargs["metavar"] = "PATIENCE"
    p.add_argument(flag_of(name, info, prefix), **kwargs)


def add_run_options(p: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """Every run setting as an option (``suppress``: an option not given is absent from the namespace,
    so ``tune`` can tell a fixed parameter from one left to the search)."""
    run_defaults, aug_defaults = entry_defaults(), dataclasses.asdict(AugmentConfig())
    for name, info in RUN_SETTINGS.items():
        _add_setting(p, name, info, argparse.SUPPRESS if suppress else run_defaults[name])
    for name, info in AUGMENT_SETTINGS.items():
        _add_setting(p, name, info, argparse.SUPPRESS if suppress else aug_defaults[name], prefix="aug-")


def _add_run_setting(p: argparse.ArgumentParser, name: str, default: Any, help: str | None = None) -> None:
    """One run setting as an option of a command that is not a training (``describe``, ``project``...)."""
    _add_setting(p, name, RUN_SETTINGS[name], default, help=help)


# -- the parser ---------------------------------------------------------------------------------------------
def _add_describe(sub: Any) -> None:
    p = sub.add_parser("describe", help="parameter counts of a (truncated) backbone + head")
    defaults = entry_defaults()
    for name in ("backbone", "remove_blocks", "dense_1024", "batch_norm", "image_size"):
        _add_run_setting(p, name, defaults[name])
    p.add_argument("--classes", type=int, default=8)
    _add_artifacts_and_json(p)  # counts are cached there: asked again, they are read without TensorFlow


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a run, or return it from the cache")
    p.add_argument("--data", default=None, help=DATA_HELP)
    add_run_options(p)
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    _add_cluster(p)
    _add_artifacts_and_json(p)


def _add_cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="train on the Dask scheduler at tcp://HOST:PORT (default: SCENELAB_CLUSTER; 'local' or unset: "
                   "this machine)")  # fmt: skip


def _add_download(sub: Any) -> None:
    p = sub.add_parser("download-data", help="download the 8-scene images and split them")
    p.add_argument("--to", required=True, help="destination folder (must be new or empty)")
    p.add_argument("--zip", default=None, help="use an already downloaded zip instead")
    _add_run_setting(p, "seed", 0, help="seed of the stratified train/test split")
    p.add_argument("--json", action="store_true")


def _add_tune(sub: Any) -> None:
    p = sub.add_parser(
        "tune",
        help="hyperparameter search with Optuna (create or resume a study; run as many workers as you like)",
        description=(
            "Create or resume an Optuna study and work on it until it holds --trials finished trials. "
            "Several processes (on several machines, with a shared --storage) may work on one study. "
            "A train option given here fixes that parameter."
        ),
        epilog=(
            "A trial whose worker died is failed (at once on this machine, after the heartbeat's grace period "
            "elsewhere) and its configuration runs again. Environment: SCENELAB_HEARTBEAT_S (beat interval, default "
            "10), SCENELAB_HEARTBEAT_GRACE_S (silence before a trial is failed, default 60), SCENELAB_HOST (this "
            "machine's name in the study). See docs/SEARCH.md."
        ),
    )
    p.add_argument("--data", default=None, help="dataset folder (default: the one the study was created with)")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument(
        "--trials",
        type=int,
        default=None,
        help=f"finished trials the study should hold (default {DEFAULT_TRIALS}, or the study's)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL or file (.db SQLite, .log journal); default <artifacts>/studies/studies.db",
    )
    p.add_argument("--timeout", type=float, default=None, help="stop asking for new trials after S seconds")
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="tpe (default) or random")
    p.add_argument("--pruner", choices=PRUNERS, default=None, help="median (default) or none")
    p.add_argument("--space", default=None, help="JSON file narrowing or fixing search parameters")
    p.add_argument(
        "--repeats",
        default=None,
        help=(
            "trainings per trial, each with another seed (validation split and initial weights), scored by "
            f"their mean validation accuracy; 'auto' (default): {AUTO_REPEATS_CHEAP} when trials train heads on "
            "cached features, else 1"
        ),
    )
    add_run_options(p, suppress=True)
    _add_artifacts_and_json(p)


def _add_artifacts_and_json(p: argparse.ArgumentParser) -> None:
    """The two options every command that reads or writes runs takes."""
    p.add_argument("--artifacts", default=None, help="artifacts folder (default: SCENELAB_ARTIFACTS or ./artifacts)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's classifier as a stand-alone .keras or .tflite file, with labels.txt and a model card",
        description=(
            "The file takes raw 0..255 RGB float32 images (batch, size, size, 3) at the run's image size and outputs "
            "class probabilities in the order of labels.txt, written beside it with a JSON model card (<stem>.json)."
        ),
    )
    p.add_argument("run_id", metavar="RUN_ID", help="the run's id (artifacts/runs/<RUN_ID>)")
    p.add_argument(
        "--to", required=True, metavar="FILE", help="the file to write; its suffix picks the format: .keras or .tflite"
    )
    _add_artifacts_and_json(p)


def _add_import(sub: Any) -> None:
    p = sub.add_parser(
        "import-data",
        help="unpack a dataset zip (train/ and test/ class folders, or class folders only) into a new folder",
        description=(
            "Unpack a zip of train/<class>/ and test/<class>/ folders, or of class folders only (then split, seeded and "
            "stratified), into a new folder under an allowed data root, validated like any dataset folder. Hostile or "
            "broken archives (.. or absolute paths, links, bombs, not a zip, no images) are refused and leave nothing."
        ),
    )
    p.add_argument("zip", metavar="ZIP", help="the dataset zip")
    p.add_argument(
        "--to",
        default=None,
        metavar="DIR",
        help="new or empty destination folder (default: <upload root>/<zip name>; see SCENELAB_DATA_ROOTS)",
    )
    p.add_argument("--test-fraction", type=float, default=0.3, help="test share when the zip holds class folders only")
    _add_run_setting(p, "seed", 0, help="seed of that split")
    p.add_argument("--json", action="store_true")


def _add_reproduce(sub: Any) -> None:
    p = sub.add_parser("reproduce", help="reproduce the study's table: train every row (cheapest first), then the search",
                       description="Train every run of the study's table that is not stored yet (cheapest first), "
                       "complete the task-5 search, and print the study's figures beside ours.")  # fmt: skip
    p.add_argument("--data", default=None, help=DATA_HELP)
    defaults = entry_defaults()
    for name in SHARED_SETTINGS:
        _add_run_setting(p, name, defaults[name])
    p.add_argument(
        "--mode",
        choices=list(MODES),
        default="quick",
        help="quick: heads on the frozen backbone (task 0 fine-tunes for 2 epochs); faithful: every row "
        "fine-tuned as the study did (the head, then the last blocks)",
    )
    p.add_argument(
        "--repeats", type=int, default=1, help="seeds per row (the table shows their mean and a 95%% interval)"
    )
    p.add_argument(
        "--trained-blocks",
        type=int,
        default=DEFAULT_TRAINED_BLOCKS,
        help="faithful mode: blocks fine-tuned from the end of each (cut) network; the rest stays frozen",
    )
    p.add_argument(
        "--trials",
        type=int,
        default=DEFAULT_TRIALS,
        help=f"trials of the task-5 search (default {DEFAULT_TRIALS}; 0: no search)",
    )
    p.add_argument(
        "--grid-sample",
        type=int,
        default=DEFAULT_GRID_SAMPLE,
        help=f"points of the augmentation grid, a seeded sample (default {DEFAULT_GRID_SAMPLE}; 128: all)",
    )
    p.add_argument("--estimate", action="store_true", help="only say how long the missing rows will take")
    p.add_argument("--report", default=None, help="write a report (Markdown, SVG and PNG charts) into this folder")
    _add_cluster(p)
    _add_artifacts_and_json(p)


def _add_explain(sub: Any) -> None:
    p = sub.add_parser("explain", help="where a model looks in one image: a heatmap overlay and its predictions")
    p.add_argument("--run", default=None, help="a stored run's id (else --backbone with its ImageNet top)")
    defaults = entry_defaults()
    _add_run_setting(
        p,
        "backbone",
        None,
        help=f"without --run: the ImageNet backbone, not fine-tuned (default "
        f"{defaults['backbone']}, which has its ImageNet top)",
    )
    _add_run_setting(p, "weights", "imagenet", help="without --run: imagenet (a model with its ImageNet top)")
    _add_run_setting(p, "image_size", None, help=f"without --run: pixels (default {defaults['image_size']})")
    p.add_argument("--image", required=True, help="the image file (JPEG, PNG, BMP, GIF, WEBP or TIFF)")
    p.add_argument("--block", default=None, help="the block to explain (default: a middle block, e.g. block5c_add)")
    p.add_argument("--method", choices=list(EXPLAIN_METHODS), default="gradcam")
    p.add_argument("--class", dest="class_name", default=None, help="the class to explain (default: the predicted one)")
    p.add_argument("--out", required=True, help="where to write the overlay (PNG)")
    _add_artifacts_and_json(p)


def _add_project(sub: Any) -> None:
    p = sub.add_parser("project", help="every image's features as a 2-D map (one CSV row per image)")
    p.add_argument("--data", default=None, help=DATA_HELP)
    defaults = entry_defaults()
    _add_run_setting(p, "backbone", None, help=f"default: the run's, else {defaults['backbone']}")
    _add_run_setting(p, "weights", None, help="imagenet, none or a weights file (default: the run's, else imagenet)")
    _add_run_setting(p, "image_size", None, help=f"pixels (default: the run's, else {defaults['image_size']})")
    p.add_argument("--run", default=None, help="a stored run's id: project what it learned, mark its test mistakes")
    p.add_argument("--method", choices=list(PROJECTION_METHODS), default="pca")
    _add_run_setting(p, "seed", 0, help="seed of the projection (t-SNE)")
    p.add_argument("--out", required=True, help="where to write the CSV (x, y, class, split, predicted, path)")
    _add_artifacts_and_json(p)


def _add_runs(sub: Any) -> None:
    p = sub.add_parser("runs", help="the stored runs, newest first (read from the store, without TensorFlow)")
    _add_artifacts_and_json(p)


def _add_best(sub: Any) -> None:
    p = sub.add_parser(
        "best", help="the best model this machine can make in a budget of minutes, chosen on validation alone",
        description="Search (Optuna, resumable) over the fine-tuned depth, image size, learning rate and schedule, "
        "epochs, dropout, flips and test-time flip, fine-tuning the last blocks on cached activations of the frozen "
        "prefix; keep the run, or the ensemble of the best few runs, that scores highest on validation; print its "
        "test accuracy once, at the end. Calling it again goes on with the same search.",
    )  # fmt: skip
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--minutes", type=float, required=True, help="minutes of search in this call")
    p.add_argument("--trials", type=int, default=None, help="also stop after this many trials in this call")
    p.add_argument("--small", action="store_true", help=f"train on the study's small set ({SMALL} images per class)")
    p.add_argument("--storage", default=None, help="Optuna storage URL or file (default <artifacts>/studies/studies.db)")
    defaults = entry_defaults()
    for name in ("backbone", "weights", "seed"):
        _add_run_setting(p, name, defaults[name])
    _add_artifacts_and_json(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m core", description="SceneLab core: describe, train, tune, reproduce the study, export, explain."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (
        _add_describe,
        _add_train,
        _add_download,
        _add_tune,
        _add_export,
        _add_import,
        _add_reproduce,
        _add_explain,
        _add_project,
        _add_runs,
        _add_best,
    ):
        add(sub)
    return parser


def parse_tune(argv: Sequence[str]) -> StudyRequest:
    """``tune``'s arguments as a :class:`StudyRequest` (for the app, which starts workers with them)."""
    return tune_request(build_parser().parse_args(["tune", *argv]))


# -- running a command ------------------------------------------------------------------------------------
def _emit(payload: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(payload, default=str))
    else:
        for k, v in payload.items():
            print(f"{k}: {v}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        from core.commands import COMMANDS

        _emit(COMMANDS[args.command](args), args.json)
        return 0
    except SceneLabError as exc:
        sys.stderr.write(f"scenelab: {exc}\n")
        return 2
    except OSError as exc:  # a full or read-only disk met outside the store's own checks
        sys.stderr.write(
            f"scenelab: could not complete {args.command} because {os_error_phrase(exc)}; free some space or "
            "choose a writable artifacts folder (--artifacts). Earlier results are untouched.\n"
        )
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("scenelab: interrupted; finished runs are kept, the unfinished one was not saved.\n")
        return 130
