"""``python -m core describe|train|download-data``: the contract the app, benchmarks and search use.

With ``--json`` the last line printed on stdout is one JSON object. A bad argument, dataset or
weights request exits with code 2 and one sentence on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from core.config import OPTIMIZERS, PHASES, AugmentConfig, RunConfig
from core.errors import SceneLabError

logger = logging.getLogger("core")

DEFAULT_ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def default_artifacts() -> Path:
    return Path(os.environ.get("SCENELAB_ARTIFACTS") or DEFAULT_ARTIFACTS)


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


def add_run_options(p: argparse.ArgumentParser, *, for_search: bool = False) -> None:
    """The training options shared by ``train`` and ``tune`` (for ``tune`` they fix a parameter).

    With ``for_search`` every default is ``None`` so ``tune`` can tell a fixed parameter from one
    left to the search.
    """
    d = RunConfig()

    def default(value: Any) -> Any:
        return None if for_search else value

    p.add_argument("--backbone", default=d.backbone, help="densenet121 or efficientnet_lite0")
    p.add_argument("--weights", default=d.weights, help="imagenet, none, or a weights file path")
    p.add_argument("--remove-blocks", type=int, default=d.remove_blocks, help="blocks cut from the end, 0-3")
    p.add_argument(
        "--freeze-blocks",
        type=int,
        default=d.freeze_blocks,
        help="full/head+full: keep the first K blocks frozen and train the rest on their cached output",
    )
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--train-per-class", type=_opt_int, default=d.train_per_class, help="small-data set size per class")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--phase", choices=PHASES, default=d.phase)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--full-epochs", type=int, default=d.full_epochs, help="epochs of the full phase of head+full")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=default(d.optimizer))
    p.add_argument("--lr", type=float, default=default(d.lr))
    p.add_argument("--full-lr", type=float, default=d.full_lr, help="learning rate of the full phase (default lr/10)")
    p.add_argument("--weight-decay", type=float, default=default(d.weight_decay))
    p.add_argument("--momentum", type=float, default=default(d.momentum))
    p.add_argument("--batch-size", type=int, default=default(d.batch_size))
    p.add_argument("--dropout", type=float, default=default(d.dropout))
    p.add_argument("--batch-norm", type=_bool, nargs="?", const=True, default=default(d.batch_norm))
    p.add_argument("--dense-1024", type=_bool, nargs="?", const=True, default=d.dense_1024)
    p.add_argument("--early-stopping", type=int, default=d.early_stopping_patience, metavar="PATIENCE", help="0 = off")
    p.add_argument("--reduce-lr-patience", type=int, default=d.reduce_lr_patience, help="0 = off")
    p.add_argument("--reduce-lr-factor", type=float, default=d.reduce_lr_factor)
    a = AugmentConfig()
    p.add_argument("--aug-rotation", type=float, default=a.rotation, help="degrees")
    p.add_argument("--aug-width-shift", type=float, default=a.width_shift)
    p.add_argument("--aug-height-shift", type=float, default=a.height_shift)
    p.add_argument("--aug-shear", type=float, default=a.shear)
    p.add_argument("--aug-zoom", type=float, default=a.zoom)
    p.add_argument("--aug-hflip", type=_bool, nargs="?", const=True, default=a.hflip)
    p.add_argument("--aug-vflip", type=_bool, nargs="?", const=True, default=a.vflip)
    p.add_argument("--aug-grid-mask", type=_bool, nargs="?", const=True, default=a.grid_mask, help="keras-cv GridMask")
    p.add_argument("--aug-channel-shuffle", type=_bool, nargs="?", const=True, default=a.channel_shuffle)
    p.add_argument(
        "--tta",
        type=_bool,
        nargs="?",
        const=True,
        default=d.tta,
        help="test-time flip: validation and test predictions averaged over each image and its mirror",
    )
    p.add_argument("--seed", type=int, default=d.seed)


def config_from_args(args: argparse.Namespace, **overrides: Any) -> RunConfig:
    """A RunConfig from parsed options; ``None`` values (search parameters) keep the defaults."""
    values = {
        "backbone": args.backbone,
        "weights": args.weights,
        "remove_blocks": args.remove_blocks,
        "freeze_blocks": args.freeze_blocks,
        "tta": args.tta,
        "image_size": args.image_size,
        "train_per_class": args.train_per_class,
        "val_fraction": args.val_fraction,
        "phase": args.phase,
        "epochs": args.epochs,
        "full_epochs": args.full_epochs,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "full_lr": args.full_lr,
        "weight_decay": args.weight_decay,
        "momentum": args.momentum,
        "batch_size": args.batch_size,
        "dropout": args.dropout,
        "batch_norm": args.batch_norm,
        "dense_1024": args.dense_1024,
        "early_stopping_patience": args.early_stopping,
        "reduce_lr_patience": args.reduce_lr_patience,
        "reduce_lr_factor": args.reduce_lr_factor,
        "seed": args.seed,
    }
    values = {k: v for k, v in values.items() if v is not None or k in ("train_per_class", "full_epochs", "full_lr")}
    values.update(overrides)
    aug = AugmentConfig(
        rotation=args.aug_rotation,
        width_shift=args.aug_width_shift,
        height_shift=args.aug_height_shift,
        shear=args.aug_shear,
        zoom=args.aug_zoom,
        hflip=args.aug_hflip,
        vflip=args.aug_vflip,
        grid_mask=args.aug_grid_mask,
        channel_shuffle=args.aug_channel_shuffle,
    )
    return RunConfig(augment=aug, **values).validate()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m core", description="SceneLab core: describe, train, download data.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("describe", help="parameter counts of a (truncated) backbone + head")
    p.add_argument("--backbone", default="densenet121")
    p.add_argument("--remove-blocks", type=int, default=0)
    p.add_argument("--dense-1024", action="store_true")
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("train", help="train a run, or return it from the cache")
    p.add_argument("--data", required=True, help="dataset folder <root>/{train,test}/<class>/")
    add_run_options(p)
    p.add_argument("--artifacts", default=None, help="artifacts folder (default: SCENELAB_ARTIFACTS or ./artifacts)")
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("download-data", help="download the 8-scene images and split them")
    p.add_argument("--to", required=True, help="destination folder (must be new or empty)")
    p.add_argument("--zip", default=None, help="use an already downloaded zip instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")

    try:
        from core import tuning

        tuning.add_cli(sub)
    except ImportError:  # the search is optional until core.tuning exists
        pass
    return parser


def _progress_printer(quiet: bool):
    def show(event: dict[str, Any]) -> None:
        if quiet:
            return
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

    return show


def _emit(payload: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(payload, default=str))
    else:
        for k, v in payload.items():
            print(f"{k}: {v}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        return _dispatch(args)
    except SceneLabError as exc:
        sys.stderr.write(f"scenelab: {exc}\n")
        return 2
    except OSError as exc:  # a full or read-only disk met outside the store's own checks
        from core.errors import os_error_phrase

        sys.stderr.write(
            f"scenelab: could not complete {args.command} because {os_error_phrase(exc)}; free some space or "
            "choose a writable artifacts folder (--artifacts). Earlier results are untouched.\n"
        )
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("scenelab: interrupted; finished runs are kept, the unfinished one was not saved.\n")
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "describe":
        from core.model import describe

        RunConfig(backbone=args.backbone, remove_blocks=args.remove_blocks, image_size=args.image_size).validate()
        from core.backbones import get_backbone

        get_backbone(args.backbone).cut_layer(args.remove_blocks)
        _emit(
            describe(
                args.backbone,
                args.remove_blocks,
                classes=args.classes,
                dense_1024=args.dense_1024,
                batch_norm=args.batch_norm,
                image_size=args.image_size,
            ),
            args.json,
        )
        return 0
    if args.command == "train":
        from core.store import Store
        from core.train import train

        cfg = config_from_args(args)
        store = Store(args.artifacts or default_artifacts())
        result = train(cfg, args.data, store, progress=_progress_printer(False), force=args.force)
        _emit(result.summary(), args.json)
        return 0
    if args.command == "download-data":
        from core.download import download_data

        counts = download_data(args.to, args.zip, seed=args.seed)
        _emit({"to": str(Path(args.to).resolve()), "counts": counts}, args.json)
        return 0
    if args.command == "tune":
        from core import tuning

        return tuning.run_cli(args)
    raise SystemExit(2)  # pragma: no cover - argparse rejects unknown commands
