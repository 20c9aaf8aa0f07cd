"""The search space: the study's sweep by default, narrowed, fixed or widened by a space file.

A spec is ``{"type": "float"|"int", "low", "high", "log", "step"}`` or ``{"type": "categorical",
"choices": [...]}``, optionally with ``"if": {"optimizer": [...]}`` (drawn only when an earlier parameter
has one of those values). Any run setting marked searchable in ``core.config`` may be searched.
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

Space = dict[str, dict[str, Any]]


def _spec_error(name: str, what: str) -> ConfigError:
    return ConfigError(f"Search space parameter {name!r}: {what}.")


def _normalise_spec(name: str, spec: Any, default: dict[str, Any] | None) -> dict[str, Any] | Any:
    """A validated spec dict, or a plain value when the spec fixes the parameter."""
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        return spec  # a fixed value
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise _spec_error(name, f"unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(_SPEC_KEYS))}")
    if "type" not in spec:
        if default is None:
            raise _spec_error(name, "give a 'type' (float, int or categorical)")
        # narrowing a default parameter: keep what is not given
        keep = {k: v for k, v in default.items() if not (k == "choices" and "low" in spec)}
        spec = {**keep, **spec}
    kind = spec["type"]
    out: dict[str, Any] = {"type": kind}
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _spec_error(name, "'choices' must be a non-empty list")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise _spec_error(name, f"choice {c!r} is not a number, string, true/false or null")
        if len(set(map(json.dumps, choices))) != len(choices):
            raise _spec_error(name, "'choices' repeats a value")
        if len(choices) == 1:
            return choices[0]
        out["choices"] = list(choices)
    elif kind in ("float", "int"):
        try:
            low, high = float(spec["low"]), float(spec["high"])
        except (KeyError, TypeError, ValueError):
            raise _spec_error(name, "a float or int parameter needs numeric 'low' and 'high'") from None
        if not (math.isfinite(low) and math.isfinite(high)) or low > high:
            raise _spec_error(name, f"'low' ({low:g}) must not exceed 'high' ({high:g})")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise _spec_error(name, f"a log range needs 'low' > 0; received {low:g}")
        if low == high:
            return int(low) if kind == "int" else low
        if kind == "int":
            if low != int(low) or high != int(high):
                raise _spec_error(name, "an int range needs whole-number 'low' and 'high'")
            low, high = int(low), int(high)
        out.update(low=low, high=high, log=log)
        if spec.get("step") is not None:
            if log:
                raise _spec_error(name, "'step' and 'log' cannot be combined")
            out["step"] = spec["step"]
    else:
        raise _spec_error(name, f"unknown type {kind!r}; expected float, int or categorical")
    if spec.get("if") is not None:
        cond = spec["if"]
        if not isinstance(cond, dict) or not all(isinstance(v, list) for v in cond.values()):
            raise _spec_error(name, "'if' must map a parameter to a list of values, e.g. {\"optimizer\": [\"sgd\"]}")
        out["if"] = {k: list(v) for k, v in cond.items()}
    return out


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
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(SEARCHABLE))
    if unknown:
        raise ConfigError(
            f"Unknown search parameter(s) {', '.join(unknown)}; a space may search {', '.join(SEARCHABLE)}."
        )
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
    return data


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
