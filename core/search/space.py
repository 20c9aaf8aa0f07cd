"""The search space: the study's sweep by default, narrowed, fixed or widened by a space file.

A spec is ``{"type": "float"|"int", "low", "high", "log", "step"}`` or ``{"type": "categorical",
"choices": [...]}``, optionally with ``"if": {"optimizer": [...]}`` (drawn only when an earlier parameter
has one of those values). Any run setting marked searchable in ``core.config`` may be searched.

A space file is checked whole when it is read, before any study exists: every bound, step, choice and
fixed value against its setting's metadata (``core.fields.Setting``: kind, valid range, choices), so a
mistake is one sentence naming the key instead of a study whose trials all fail.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import optuna

from core.config import OPTIMIZERS, RUN_SETTINGS, RunConfig
from core.errors import ConfigError
from core.fields import Setting, check_value, flag_of

#: The study's search space (its W&B sweep), in the order the parameters are drawn.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "optimizer": {"type": "categorical", "choices": list(OPTIMIZERS)},
    "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "weight_decay": {"type": "float", "low": 1e-5, "high": 0.3, "log": True},
    "momentum": {"type": "float", "low": 0.0, "high": 0.99, "if": {"optimizer": ["sgd", "rmsprop"]}},
    "dropout": {"type": "float", "low": 0.0, "high": 0.9},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32, 64, 128]},
    "batch_norm": {"type": "categorical", "choices": [False, True]},
}
#: RunConfig fields a space may search (augmentation is set with the train options).
SEARCHABLE = tuple(name for name, info in RUN_SETTINGS.items() if info.searchable)
_SPEC_KEYS = {"type", "low", "high", "log", "step", "choices", "if"}
_NUMERIC = ("int", "float")

Space = dict[str, dict[str, Any]]


def _spec_error(name: str, what: str) -> ConfigError:
    return ConfigError(f"Search space parameter {name!r}: {what}.")


def _check(name: str, value: Any, where: str = "") -> None:
    """``value`` must be valid for the setting ``name`` (one sentence naming the key and ``where`` in its spec)."""
    try:
        check_value(name, RUN_SETTINGS[name], value)
    except ConfigError as exc:
        raise ConfigError(f"Search space parameter {name!r}{where}: {exc}") from None


def _kind_of(name: str, spec: dict[str, Any]) -> str:
    """The spec's type, inferred from the setting when not given (numbers: a range; others: choices)."""
    info = RUN_SETTINGS[name]
    kind = spec.get("type")
    if kind is None:
        kind = info.kind if info.kind in _NUMERIC and "choices" not in spec else "categorical"
    if kind not in (*_NUMERIC, "categorical"):
        raise _spec_error(name, f"unknown type {kind!r}; expected float, int or categorical")
    if kind in _NUMERIC and info.kind not in _NUMERIC:
        raise _spec_error(name, f"{info.label} is not a number, so give its choices as a list instead of a {kind} range")
    if kind == "float" and info.kind == "int":
        raise _spec_error(name, f'{info.label} ({flag_of(name, info)}) is a whole number, so its range needs "type": "int"; received "type": "float"')
    return kind


def _default_choices(info: Setting) -> list[Any] | None:
    if info.kind == "bool":
        return [False, True]
    return list(info.choices) if info.kind == "choice" else None


def _categorical(name: str, spec: dict[str, Any]) -> dict[str, Any] | Any:
    choices = spec.get("choices", _default_choices(RUN_SETTINGS[name]))
    if not isinstance(choices, list) or not choices:
        raise _spec_error(name, "'choices' must be a non-empty list")
    for c in choices:
        if c is not None and not isinstance(c, (bool, int, float, str)):
            raise _spec_error(name, f"choice {c!r} is not a number, string, true/false or null")
        _check(name, c, " (a choice)")
    if len(set(map(json.dumps, choices))) != len(choices):
        raise _spec_error(name, "'choices' repeats a value")
    return choices[0] if len(choices) == 1 else {"type": "categorical", "choices": list(choices)}


def _numeric(name: str, spec: dict[str, Any], kind: str) -> dict[str, Any] | Any:
    if "low" not in spec or "high" not in spec:
        raise _spec_error(name, "a float or int parameter needs 'low' and 'high'")
    low, high = spec["low"], spec["high"]
    for bound, value in (("low", low), ("high", high)):
        _check(name, value, f" ({bound!r})")
    if low > high:
        raise _spec_error(name, f"'low' ({low:g}) must not exceed 'high' ({high:g})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _spec_error(name, f"'log' must be true or false; received {log!r}")
    if log and low <= 0:
        raise _spec_error(name, f"a log range needs 'low' > 0; received {low:g}")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise _spec_error(name, f"an int range needs whole-number 'low' and 'high'; received {low!r} and {high!r}")
    if low == high:
        return int(low) if kind == "int" else float(low)
    out: dict[str, Any] = {"type": kind, "low": int(low) if kind == "int" else low, "high": int(high) if kind == "int" else high, "log": log}
    step = spec.get("step")
    if step is not None:
        number = isinstance(step, (int, float)) and not isinstance(step, bool) and math.isfinite(step)
        if not number or step <= 0 or (kind == "int" and step != int(step)):
            whole = " whole" if kind == "int" else ""
            raise _spec_error(name, f"'step' must be a positive{whole} number; received {step!r}")
        if log:
            raise _spec_error(name, "'step' and 'log' cannot be combined")
        out["step"] = int(step) if kind == "int" else step
    return out


def _normalise_spec(name: str, spec: Any, default: dict[str, Any] | None) -> dict[str, Any] | Any:
    """A validated spec dict, or a plain (checked) value when the spec fixes the parameter."""
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        _check(name, spec, " (a fixed value)")
        return spec
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise _spec_error(name, f"unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(_SPEC_KEYS))}")
    if "type" not in spec and default is not None:  # narrowing a default parameter: keep what is not given
        keep = {k: v for k, v in default.items() if not (k in ("choices", "type") and "low" in spec)}
        spec = {**keep, **spec}
    kind = _kind_of(name, spec)
    out = _categorical(name, spec) if kind == "categorical" else _numeric(name, spec, kind)
    if spec.get("if") is not None:
        cond = spec["if"]
        if not isinstance(cond, dict) or not all(isinstance(v, list) for v in cond.values()):
            raise _spec_error(name, "'if' must map a parameter to a list of values, e.g. {\"optimizer\": [\"sgd\"]}")
        if isinstance(out, dict):
            out["if"] = {k: list(v) for k, v in cond.items()}
    return out


def check_space(overrides: dict[str, Any], fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a whole space file (every key, bound, step, choice and fixed value); return it unchanged.

    ``fixed`` holds the parameters the command line fixes: a parameter both there and in the file
    (other than ``null``) is refused, as joining the study would refuse it later."""
    unknown = sorted(set(overrides) - set(SEARCHABLE))
    if unknown:
        raise ConfigError(
            f"Unknown search parameter(s) {', '.join(unknown)}; a space may search {', '.join(SEARCHABLE)}."
        )
    for name, spec in overrides.items():
        if fixed and name in fixed and spec is not None:
            raise _spec_error(
                name, f"the space file searches or sets it and {flag_of(name, RUN_SETTINGS[name])} on the command line "
                "fixes it; leave one of them out (or give it as null in the file)"
            )
        if spec is not None:
            _normalise_spec(name, spec, DEFAULT_SPACE.get(name))
    return overrides


def build_space(
    overrides: dict[str, Any] | None = None,
    fixed: dict[str, Any] | None = None,
    *,
    base: dict[str, Any] | None = None,
) -> Space:
    """The search space: the study's default, narrowed by ``overrides``, minus the ``fixed`` ones.

    ``overrides`` (the ``--space`` file) maps a parameter to a spec (``{"type": "float", "low": ..,
    "high": .., "log": ..}``, ``{"type": "int", ...}``, ``{"type": "categorical", "choices": [..]}``),
    a partial spec that narrows a default parameter (``{"low": 1e-4}``), a list (categorical), a
    plain value (fixed) or ``null`` (not searched). An optional ``"if": {"optimizer": [...]}`` draws
    the parameter only when an earlier one has one of those values. Any RunConfig field but
    ``augment`` may be searched. Fixed values are returned in ``fixed`` (updated in place).
    Raises :class:`ConfigError` when nothing is left to search.
    """
    fixed = fixed if fixed is not None else {}
    base = base if base is not None else RunConfig().to_dict()
    overrides = check_space(dict(overrides or {}), fixed)
    merged: dict[str, Any] = {}
    for name in list(DEFAULT_SPACE) + [n for n in overrides if n not in DEFAULT_SPACE]:
        if name in fixed:
            continue
        if name in overrides:
            if overrides[name] is None:
                continue
            spec = _normalise_spec(name, overrides[name], DEFAULT_SPACE.get(name))
        else:
            spec = dict(DEFAULT_SPACE[name])
        if isinstance(spec, dict):
            merged[name] = spec
        else:
            fixed[name] = spec
    # resolve conditions against fixed values and earlier parameters
    space: Space = {}
    for name, spec in merged.items():
        cond = spec.get("if")
        drop = False
        new_cond: dict[str, list[Any]] = {}
        for ref, allowed in (cond or {}).items():
            if ref in fixed or (ref not in merged and ref in base):
                if (fixed[ref] if ref in fixed else base[ref]) not in allowed:
                    drop = True
            elif ref in space:
                ref_spec = space[ref]
                if ref_spec["type"] == "categorical" and not (
                    set(map(json.dumps, ref_spec["choices"])) & set(map(json.dumps, allowed))
                ):
                    drop = True
                new_cond[ref] = allowed
            else:
                raise _spec_error(name, f"its condition refers to {ref!r}, which is not drawn before it")
        if drop:
            continue
        spec = {k: v for k, v in spec.items() if k != "if"}
        if new_cond:
            spec["if"] = new_cond
        space[name] = spec
    if not space:
        raise ConfigError(
            "Nothing is left to search: every parameter is fixed (" + ", ".join(sorted(fixed) or ["all"]) + "); "
            "leave at least one parameter to the search or widen the space."
        )
    return space


def read_space_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object of a ``--space`` file."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"Could not read the search space file {p}: {exc.strerror or exc}.") from None
    except ValueError as exc:
        raise ConfigError(f"The search space file {p} is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"The search space file {p} must hold one JSON object of parameter: spec.")
    return check_space(data)


def suggest(trial: optuna.trial.BaseTrial, space: Space) -> dict[str, Any]:
    """Draw one set of parameters from ``space`` (conditional ones only when their condition holds)."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        cond = spec.get("if") or {}
        if any(params.get(ref) not in allowed for ref, allowed in cond.items()):
            continue
        kind = spec["type"]
        if kind == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif kind == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step", 1))
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step"))
    return params
