"""Run settings declared once: each dataclass field of a config carries a :class:`Setting`.

A setting's metadata (plain-words label, help, range or choices, CLI flag, whether the search may
draw it) drives everything that used to write the field out again by hand: validation with one
sentence naming the option and quoting the value (:func:`validate_fields`), the command-line options
(``core.cli``), the search's list of searchable parameters (``core.search.space``) and the pages'
widgets and defaults (``ui.panel``). Adding a run setting means adding one field with its
``Setting`` to ``core.config.RunConfig`` and showing it on the page that uses it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError

KINDS = ("int", "float", "bool", "choice", "str")


@dataclass(frozen=True)
class Setting:
    """What SceneLab knows about one run setting besides its default value.

    ``low``/``high`` bound numbers (``low_open``/``high_open`` make a bound exclusive); ``optional``
    allows ``None`` (shown as ``none_label``); ``late`` marks a setting added after runs were first
    cached: it enters a run's id only when it differs from its default, so earlier ids stay valid.
    """

    label: str
    help: str
    kind: str
    flag: str = ""  # the CLI option; derived from the field name when empty
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    optional: bool = False
    none_label: str = "none"
    searchable: bool = True
    log: bool = False  # numbers spanning decades: log-scale search, scientific format on pages
    step: float | None = None  # the pages' step for numbers
    ui_min: float | None = None  # the pages' bounds, where narrower than what is valid (e.g. 1e-6 for lr)
    ui_max: float | None = None
    unit: str = ""
    late: bool = False
    shared: bool = False  # set once for every page (the sidebar), not per page
    link: str = ""  # its parameter in a page's link (the field name when empty)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Setting kind must be one of {', '.join(KINDS)}. Received: kind={self.kind!r}")


def setting(default: Any, label: str, help: str, kind: str, **meta: Any) -> Any:
    """A dataclass field with its :class:`Setting` (``default`` may be a factory for nested configs)."""
    info = Setting(label=label, help=help, kind=kind, **meta)
    if callable(default) and not isinstance(default, (bool, int, float, str)):
        return dataclasses.field(default_factory=default, metadata={"setting": info})
    return dataclasses.field(default=default, metadata={"setting": info})


def settings_of(cls: Any) -> dict[str, Setting]:
    """Field name -> :class:`Setting` for every declared setting of a config class, in field order."""
    return {f.name: f.metadata["setting"] for f in dataclasses.fields(cls) if "setting" in f.metadata}


def flag_of(name: str, info: Setting, prefix: str = "") -> str:
    """The command-line option of a setting, e.g. ``--full-lr`` or ``--aug-zoom``."""
    return info.flag or f"--{prefix}{name.replace('_', '-')}"


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
NONE_WORDS = ("", "none", "all")


def parse_text(name: str, info: Setting, raw: str, prefix: str = "") -> Any:
    """A setting's value from text (a command-line option, a link's parameter): one parser, so a value
    the CLI takes means the same in a link. Converts only; :func:`check_value` checks the range.
    Raises :class:`ConfigError` with one sentence."""
    text = raw.strip()
    if info.optional and text.lower() in NONE_WORDS:
        return None
    try:
        if info.kind == "int":
            return int(text)
        if info.kind == "float":
            return float(text)
    except ValueError:
        kind = "a whole number" if info.kind == "int" else "a number"
        raise ConfigError(f"{info.label} ({flag_of(name, info, prefix)}) must be {kind}; received {raw!r}.") from None
    if info.kind == "bool":
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise ConfigError(f"{info.label} ({flag_of(name, info, prefix)}) must be true or false; received {raw!r}.")
    return raw


def to_text(value: Any) -> str:
    """A setting's value as :func:`parse_text` reads it back (``None`` as ``none``, booleans as true/false)."""
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _num(value: float) -> str:
    """A bound as a person writes it: 4294967295, 0.9, 1e-05."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def _number_phrase(info: Setting) -> str:
    lo, hi = info.low, info.high
    if lo is not None and hi is not None:
        if not info.low_open and not info.high_open:
            return f"between {_num(lo)} and {_num(hi)}"
        left, right = "(" if info.low_open else "[", ")" if info.high_open else "]"
        return f"in {left}{_num(lo)}, {_num(hi)}{right}"
    if lo is not None:
        return f"more than {_num(lo)}" if info.low_open else f"at least {_num(lo)}"
    if hi is not None:
        return f"less than {_num(hi)}" if info.high_open else f"at most {_num(hi)}"
    return "a finite number"


def check_value(name: str, info: Setting, value: Any, prefix: str = "") -> None:
    """Raise :class:`ConfigError` with one sentence (label, option, expected, the value received)."""
    where = f"{info.label} ({flag_of(name, info, prefix)})"
    if value is None:
        if info.optional:
            return
        raise ConfigError(f"{where} must be set; received nothing.")
    if info.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false; received {value!r}.")
        return
    if info.kind in ("choice", "str"):
        if info.choices and value not in info.choices:
            shown = ", ".join(str(c) for c in info.choices)
            raise ConfigError(f"{where} must be one of {shown}; received {value!r}.")
        if info.kind == "str" and not isinstance(value, str):
            raise ConfigError(f"{where} must be text; received {value!r}.")
        return
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if info.kind == "int" and not (is_number and float(value).is_integer()):
        raise ConfigError(f"{where} must be a whole number; received {value!r}.")
    if not is_number:
        raise ConfigError(f"{where} must be a number; received {value!r}.")
    if not math.isfinite(float(value)):
        raise ConfigError(f"{where} must be a finite number; received {value!r}.")
    lo, hi = info.low, info.high
    too_low = lo is not None and (value <= lo if info.low_open else value < lo)
    too_high = hi is not None and (value >= hi if info.high_open else value > hi)
    if too_low or too_high:
        raise ConfigError(f"{where} must be {_number_phrase(info)}{' ' + info.unit if info.unit else ''}; received {value!r}.")


def validate_fields(config: Any, prefix: str = "") -> None:
    """Check every declared setting of a config instance (first bad one raises)."""
    for name, info in settings_of(type(config)).items():
        check_value(name, info, getattr(config, name), prefix)

