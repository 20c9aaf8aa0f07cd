"""``python -m core describe|train|tune|download-data``: the contract the app, benchmarks and search use.

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
from pathlib import Path
from typing import Any, NoReturn

from core.config import AUGMENT_SETTINGS, RUN_SETTINGS, AugmentConfig, RunConfig
from core.errors import SceneLabError, os_error_phrase
from core.fields import Setting, flag_of
from core.paths import default_artifacts
from core.search.objective import AUTO_REPEATS_CHEAP
from core.search.samplers import PRUNERS, SAMPLERS
from core.search.study import DEFAULT_TRIALS, TUNE_DEFAULTS, StudyRequest

logger = logging.getLogger("core")


class _Parser(argparse.ArgumentParser):
    """argparse that answers a bad argument with one sentence and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"scenelab: {message}; run `python -m core {self.prog.split()[-1]} --help` for the options.\n")
        raise SystemExit(2)


def _bool(value: str) -> bool:
    v = value.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _opt_int(value: str) -> int | None:
    return None if value.lower() in ("none", "all", "") else int(value)


def _opt_float(value: str) -> float | None:
    return None if value.lower() in ("none", "") else float(value)


def _add_setting(p: argparse.ArgumentParser, name: str, info: Setting, default: Any, *, prefix: str = "") -> None:
    """One option for one run setting, from its metadata; ``dest`` is the field (``aug_<field>``)."""
    dest = f"{prefix.replace('-', '_')}{name}"
    kwargs: dict[str, Any] = {"dest": dest, "default": default, "help": f"{info.label}: {info.help}"}
    if info.kind == "bool":
        kwargs.update(type=_bool, nargs="?", const=True, metavar="{true,false}")
    elif info.kind == "choice":
        kwargs.update(choices=info.choices)
    elif info.kind == "int":
        kwargs["type"] = _opt_int if info.optional else int
    elif info.kind == "float":
        kwargs["type"] = _opt_float if info.optional else float
    if name == "early_stopping_patience":
        kwargs["metavar"] = "PATIENCE"
    p.add_argument(flag_of(name, info, prefix), **kwargs)


def add_run_options(p: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """Every run setting as an option (``suppress``: an option not given is absent from the namespace,
    so ``tune`` can tell a fixed parameter from one left to the search)."""
    run_defaults, aug_defaults = RunConfig().to_dict(), dataclasses.asdict(AugmentConfig())
    for name, info in RUN_SETTINGS.items():
        _add_setting(p, name, info, argparse.SUPPRESS if suppress else run_defaults[name])
    for name, info in AUGMENT_SETTINGS.items():
        _add_setting(p, name, info, argparse.SUPPRESS if suppress else aug_defaults[name], prefix="aug-")


def config_from_values(values: dict[str, Any]) -> RunConfig:
    """A RunConfig from option values keyed by field (``aug_<field>`` for augmentation); validated."""
    run = {k: v for k, v in values.items() if k in RUN_SETTINGS}
    aug = {k[4:]: v for k, v in values.items() if k.startswith("aug_") and k[4:] in AUGMENT_SETTINGS}
    return RunConfig(augment=AugmentConfig(**aug), **run).validate()


def _run_values(args: argparse.Namespace) -> dict[str, Any]:
    keys = set(RUN_SETTINGS) | {f"aug_{k}" for k in AUGMENT_SETTINGS}
    return {k: v for k, v in vars(args).items() if k in keys}


# -- the parser ---------------------------------------------------------------------------------------------
def _add_describe(sub: Any) -> None:
    p = sub.add_parser("describe", help="parameter counts of a (truncated) backbone + head")
    p.add_argument("--backbone", default="densenet121")
    p.add_argument("--remove-blocks", type=int, default=0)
    p.add_argument("--dense-1024", action="store_true")
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--json", action="store_true")


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a run, or return it from the cache")
    p.add_argument("--data", required=True, help="dataset folder <root>/{train,test}/<class>/")
    add_run_options(p)
    p.add_argument("--artifacts", default=None, help="artifacts folder (default: SCENELAB_ARTIFACTS or ./artifacts)")
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    p.add_argument("--json", action="store_true")


def _add_download(sub: Any) -> None:
    p = sub.add_parser("download-data", help="download the 8-scene images and split them")
    p.add_argument("--to", required=True, help="destination folder (must be new or empty)")
    p.add_argument("--zip", default=None, help="use an already downloaded zip instead")
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--trials", type=int, default=None, help=f"finished trials the study should hold (default {DEFAULT_TRIALS}, or the study's)")
    p.add_argument("--storage", default=None, help="Optuna storage URL or file (.db SQLite, .log journal); default <artifacts>/studies/studies.db")
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
    p.add_argument("--artifacts", default=None, help="artifacts folder (default: SCENELAB_ARTIFACTS or ./artifacts)")
    p.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m core", description="SceneLab core: describe, train, tune, download data.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_describe, _add_train, _add_download, _add_tune):
        add(sub)
    return parser


def tune_request(args: argparse.Namespace) -> StudyRequest:
    """The study a parsed ``tune`` command asks for (its explicit train options fix parameters)."""
    explicit = _run_values(args)
    cfg = config_from_values({**TUNE_DEFAULTS, **explicit})
    return StudyRequest(
        study=args.study, cfg=cfg, explicit=explicit, data=args.data, trials=args.trials, storage=args.storage,
        timeout=args.timeout, sampler=args.sampler, pruner=args.pruner, space_file=args.space,
        repeats=args.repeats, artifacts=args.artifacts,
    )


def parse_tune(argv: Sequence[str]) -> StudyRequest:
    """``tune``'s arguments as a :class:`StudyRequest` (for the app, which starts workers with them)."""
    return tune_request(build_parser().parse_args(["tune", *argv]))


# -- running a command ------------------------------------------------------------------------------------
def _progress_printer(event: dict[str, Any]) -> None:
    kind = event.get("event")
    if kind == "status":
        logger.info("%s", event["message"])
    elif kind == "epoch":
        row = event["row"]
        logger.info(
            "%s epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  lr %.2g",
            event["phase"], event["epoch"], event["epochs"], row["loss"], row["accuracy"],
            row["val_loss"], row["val_accuracy"], row["lr"],
        )
    elif kind == "features" and (event["done"] == event["total"] or event["done"] % 640 < 64):
        logger.info("features %d/%d (%.1f s)", event["done"], event["total"], event["elapsed"])


def _emit(payload: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(payload, default=str))
    else:
        for k, v in payload.items():
            print(f"{k}: {v}")


def _describe(args: argparse.Namespace) -> dict[str, Any]:
    from core.backbones import get_backbone
    from core.model import describe

    RunConfig(backbone=args.backbone, remove_blocks=args.remove_blocks, image_size=args.image_size).validate()
    get_backbone(args.backbone).cut_layer(args.remove_blocks)
    return describe(args.backbone, args.remove_blocks, classes=args.classes, dense_1024=args.dense_1024,
                    batch_norm=args.batch_norm, image_size=args.image_size)


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from core.store import Store
    from core.train import train

    cfg = config_from_values(_run_values(args))
    store = Store(args.artifacts or default_artifacts())
    return train(cfg, args.data, store, progress=_progress_printer, force=args.force).summary()


def _download(args: argparse.Namespace) -> dict[str, Any]:
    from core.download import download_data

    counts = download_data(args.to, args.zip, seed=args.seed)
    return {"to": str(Path(args.to).resolve()), "counts": counts}


def _tune(args: argparse.Namespace) -> dict[str, Any]:
    import optuna

    from core.search.study import run_study

    optuna.logging.set_verbosity(optuna.logging.INFO if args.verbose else optuna.logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # tf.function retracing notes, one per trial
    return run_study(tune_request(args))


COMMANDS = {"describe": _describe, "train": _train, "download-data": _download, "tune": _tune}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
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
