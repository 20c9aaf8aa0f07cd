"""What a search is asked, without Optuna: the request, tune's defaults, and its command-line arguments (so the
Study table, the CLI's parser and the app read them without importing Optuna; ``core.search.study`` runs it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.config import AUGMENT_SETTINGS, RUN_SETTINGS, RunConfig
from core.fields import flag_of, to_text
from core.paths import default_artifacts

DEFAULT_TRIALS = 30
#: ``tune``'s defaults that differ from ``train``'s: 30 head epochs (each head trial takes seconds on
#: cached features, the number of epochs the study's own head runs used), and the study's flip
#: augmentation, free on cached features, judged with test-time flip (``--aug-hflip false --tta false``
#: turn both off).
TUNE_DEFAULTS: dict[str, Any] = {"epochs": 30, "aug_hflip": True, "tta": True}


@dataclass
class StudyRequest:
    """What a worker was asked: the study, where it lives, and the run options given explicitly.

    ``explicit`` maps an option (a RunConfig field, or ``aug_<field>`` for augmentation) to the value
    given; ``cfg`` is tune's defaults with those values applied."""

    study: str
    cfg: RunConfig
    explicit: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    trials: int | None = None
    storage: str | None = None
    timeout: float | None = None
    sampler: str | None = None
    pruner: str | None = None
    space_file: str | None = None
    repeats: str | None = None
    artifacts: str | None = None

    @property
    def artifacts_root(self) -> str:
        return self.artifacts or str(default_artifacts())

    @property
    def storage_url(self) -> str:
        from core.search.storage import resolve_storage_url

        return resolve_storage_url(self.storage, self.artifacts_root)


def option_flag(option: str) -> str:
    """The CLI flag of an explicit option key (``early_stopping_patience`` -> ``--early-stopping``)."""
    if option.startswith("aug_") and option[4:] in AUGMENT_SETTINGS:
        return flag_of(option[4:], AUGMENT_SETTINGS[option[4:]], "aug-")
    return flag_of(option, RUN_SETTINGS[option])


def option_argv(options: dict[str, Any]) -> list[str]:
    """Run options (keys as in :attr:`StudyRequest.explicit`) as ``tune`` arguments, flags from the declaration."""
    return [text for option, value in options.items() for text in (option_flag(option), to_text(value))]


def config_argv(cfg: RunConfig) -> list[str]:
    """Every setting of ``cfg`` as ``train``'s flags (a setting left unset, None, is left out)."""
    options = {k: v for k, v in vars(cfg).items() if k != "augment" and v is not None}
    return option_argv({**options, **{f"aug_{k}": v for k, v in vars(cfg.augment).items()}})


def tune_argv(req: StudyRequest) -> list[str]:
    """The ``python -m core tune`` arguments that ask for ``req`` (``core.cli.parse_tune`` reads them back):
    what the app's background workers are started with."""
    argv = ["--study", req.study]
    others = {"--data": req.data, "--trials": req.trials, "--storage": req.storage, "--timeout": req.timeout,
              "--sampler": req.sampler, "--pruner": req.pruner, "--space": req.space_file, "--repeats": req.repeats,
              "--artifacts": req.artifacts}  # fmt: skip
    argv += [text for flag, value in others.items() if value is not None for text in (flag, str(value))]
    return [*argv, *option_argv(req.explicit), "--json"]
