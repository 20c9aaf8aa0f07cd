"""The shape of the code, checked: layers, one home per concern, limits on size, stable run ids.

These read the source (``ast``), so they are instant and fail with the file and line that broke a rule.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import AugmentConfig, RunConfig
from core.models.backbones import BACKBONES, ResolvedWeights
from core.training.identity import run_id_for

REPO = Path(__file__).resolve().parent.parent
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def sources(*folders: str) -> Iterator[Path]:
    for folder in folders:
        path = REPO / folder
        yield from [path] if path.is_file() else sorted(path.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions (``from a import b`` counts ``a.b``
    when that is a module, else ``a``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                candidate = REPO / Path(*full.split("."))
                out.add(full if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file() else node.module)
    return out


# -- run ids ---------------------------------------------------------------------------------------------------
PINNED = [  # computed with the code before the architecture change (6065db9): stored runs keep their ids
    (RunConfig(), "b7b7390d02eed5d2"),
    (RunConfig(backbone="efficientnet_lite0", image_size=128, phase="head", epochs=30), "efc9815c9214569a"),
    (RunConfig(backbone="efficientnet_lite0", image_size=64, phase="head+full", epochs=10, full_epochs=2, freeze_blocks=2),
     "50e9264591db3b08"),
    (RunConfig(backbone="efficientnet_lite0", image_size=64, phase="head+full", epochs=10, full_epochs=2), "82eb282becfe9753"),
    (RunConfig(remove_blocks=2, dense_1024=True, train_per_class=50, dropout=0.5, batch_norm=True), "9e4088dd023be319"),
    (RunConfig(augment=AugmentConfig(hflip=True, zoom=0.2), tta=True, seed=3000000000), "8ed16852edd2dc4f"),
    (RunConfig(optimizer="sgd", lr=0.01, momentum=0.5, weight_decay=1e-4, early_stopping_patience=3,
               reduce_lr_patience=2, reduce_lr_factor=0.3), "d334ea2c06a5567d"),
    (RunConfig(phase="full", freeze_blocks=1, weights="none"), "1f4349bf337043a7"),
]  # fmt: skip
WEIGHTS = [ResolvedWeights("imagenet", None, "densenet121:imagenet:x.h5"), ResolvedWeights("none", None, "efficientnet_lite0:none")]


@pytest.mark.parametrize(("index", "pinned"), list(enumerate(PINNED)))
def test_run_ids_of_stored_runs_do_not_change(index: int, pinned: tuple[RunConfig, str]) -> None:
    cfg, run_id = pinned
    assert run_id_for(cfg, "f1ngerpr1nt00000", WEIGHTS[index % 2]) == run_id


# -- layers ------------------------------------------------------------------------------------------------------
def test_core_has_no_import_cycle() -> None:
    graph = {module_name(p): {m for m in imported_modules(p) if m.startswith("core.") or m == "core"} for p in sources("core")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph or nxt == node:
                continue
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("core has an import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert len(graph) > 20


#: core's layers, bottom first: a module may import its own layer and those below, never one above
LAYERS = ("foundation", "store", "data", "models", "training", "explain", "search", "study", "entry")
FOUNDATION = {"errors", "config", "fields", "paths", "runtime", "compat"}  # core/*.py that every layer may use
# core/*.py that only the app, the CLI and tests use
ENTRY = {"cli", "commands", "worker", "tasks", "cluster", "clustertask", "__main__"}


def layer_of(module: str) -> str:
    """``core.training.phases`` -> ``training``; a top-level module is foundation or an entry point."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    if head in LAYERS:
        return head
    if head in FOUNDATION or head == "__init__":
        return "foundation"
    assert head in ENTRY, f"core/{head}.py belongs to no layer: move it into a subpackage or name it in ENTRY/FOUNDATION"
    return "entry"


#: the one import that runs up, on purpose: RunConfig's backbone defaults are the registry's names (the registry is
#: the only place that knows a backbone by name, and importing it builds nothing)
UPWARD_ALLOWED = {("core.config", "core.models.backbones")}


def test_core_folders_are_its_layers_and_imports_only_go_down() -> None:
    folders = {p.name for p in (REPO / "core").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS) - {"foundation", "entry"}, folders
    upward = []
    for path in sources("core"):
        me = layer_of(module_name(path))
        for other in (m for m in imported_modules(path) if m.startswith("core.")):
            if LAYERS.index(layer_of(other)) > LAYERS.index(me) and (module_name(path), other) not in UPWARD_ALLOWED:
                upward.append(f"{path.relative_to(REPO)} ({me}) imports {other} ({layer_of(other)})")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_core_never_imports_streamlit_and_argparse_lives_in_the_cli() -> None:
    for path in sources("core"):
        imports = imported_modules(path)
        assert not any(m.split(".")[0] == "streamlit" for m in imports), path
        if path.name != "cli.py":
            assert "argparse" not in imports, f"{path}: argparse code belongs in core/cli.py"


def test_nothing_in_core_imports_the_command_line_but_the_entry_point() -> None:
    """core.cli and core.commands sit on top of core: only ``python -m core`` (core/__main__.py) and each other
    import them, so the search's worker processes and the engine never run back up the layers."""
    top = {"core.cli", "core.commands"}
    for path in sources("core"):
        if module_name(path) in top | {"core.__main__"}:
            continue
        assert not imported_modules(path) & top, f"{path} imports the command line"


def test_pages_start_and_signal_no_processes() -> None:
    for path in sources("pages", "app.py"):
        imports = imported_modules(path)
        assert not imports & {"subprocess", "signal", "multiprocessing"}, path
        assert "os.kill" not in path.read_text(), path


# core/models/lite0.py is the network the registry's efficientnet_lite0 module builds: it names its Keras model, by
# which the registry recognises a built model (spec_of_model), so it is part of the registry's knowledge
REGISTRY_FILES = ("core/models/lite0.py",)


def test_only_the_registry_knows_a_backbone_by_name() -> None:
    """Any string equal to a backbone's name (a default, a comparison, a dict key) outside core/models/backbones/."""
    names = set(BACKBONES)
    found = []
    for path in sources("core", "ui", "pages", "app.py"):
        if "backbones" in path.relative_to(REPO).parts or str(path.relative_to(REPO)) in REGISTRY_FILES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} names {node.value!r}")
    assert not found, f"only core/models/backbones/ names a backbone (ask the registry instead): {found}"


def test_the_offline_backbones_cut_layers_are_its_networks_stage_ends() -> None:
    """core/models/backbones/efficientnet_lite0.py spells the stage ends out so the registry loads without Keras."""
    from core.models.backbones.efficientnet_lite0 import STAGE_ENDS
    from core.models.lite0 import LITE0_STAGE_ENDS

    assert STAGE_ENDS == LITE0_STAGE_ENDS


PRIVATE_MODULES = ("keras.src", "tensorflow.python", "streamlit.runtime")
ATTRIBUTE_READERS = ("getattr", "hasattr", "setattr", "delattr")
# where a private name is still used across modules, owned elsewhere; each entry must still be needed
KNOWN_PRIVATE: dict[tuple[str, str], str] = {}  # (file, name) -> why, for a use being fixed


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_names(tree: ast.AST) -> set[str]:
    """Every private name a module defines itself: functions, classes, variables, attributes it assigns."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.arg):
            own.add(node.arg)
    return {n for n in own if _is_private(n)}


def private_uses(path: Path) -> Iterator[tuple[int, str]]:
    """(line, name) for each private name ``path`` takes from another module: imported by name, read as an
    attribute (``mod._x``, ``obj._x``, ``getattr(obj, "_x")``) that the module does not define itself."""
    tree = ast.parse(path.read_text())
    own = _own_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            yield from ((node.lineno, a.name) for a in node.names if _is_private(a.name))
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if any(map(_is_private, a.name.split("."))))
        elif isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in own:
            yield node.lineno, node.attr
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ATTRIBUTE_READERS:
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and _is_private(name.value) and name.value not in own:
                yield node.lineno, name.value


def test_private_apis_only_through_the_compat_modules() -> None:
    """Private modules of Keras, TensorFlow and Streamlit, and any private name of another module (ours or a
    library's), are used only in core/compat.py and ui/compat.py, where tests/test_compat.py checks them."""
    found, known_seen = [], set()
    for path in sources("core", "ui", "pages", "app.py", "bench"):
        if path.name == "compat.py":
            continue
        rel = str(path.relative_to(REPO))
        for module in imported_modules(path):
            assert not module.startswith(PRIVATE_MODULES), f"{path} imports {module}: go through a compat module"
        for line, name in private_uses(path):
            if (rel, name) in KNOWN_PRIVATE:
                known_seen.add((rel, name))
            else:
                found.append(f"{rel}:{line} uses {name} of another module")
    assert not found, f"private names across modules (make them public, or go through a compat module): {found}"
    assert known_seen == set(KNOWN_PRIVATE), f"fixed: remove {set(KNOWN_PRIVATE) - known_seen} from KNOWN_PRIVATE"


def test_the_private_name_guard_catches_what_it_should(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from core.training.throughput import _cache\nimport core.training.throughput as t\n"
        "class A:\n    def __init__(self):\n        self._mine = 1\n    def f(self, o):\n"
        "        return self._mine, o._mine, t._cache, o._keras_history, getattr(o, '_keras_history', None)\n"
    )
    assert sorted(private_uses(probe)) == [(1, "_cache"), (7, "_cache"), (7, "_keras_history"), (7, "_keras_history")]


def test_no_command_declares_a_run_setting_by_hand() -> None:
    """core/cli.py makes every option named like a run setting through its generator (``_add_setting``), so
    its flag, type, parser and default come from RunConfig's declaration."""
    from core.config import AUGMENT_SETTINGS, RUN_SETTINGS
    from core.fields import flag_of

    flags = {flag_of(n, i) for n, i in RUN_SETTINGS.items()} | {f"--{n.replace('_', '-')}" for n in RUN_SETTINGS}
    flags |= {flag_of(n, i, "aug-") for n, i in AUGMENT_SETTINGS.items()}
    tree = ast.parse((REPO / "core" / "cli.py").read_text())
    by_hand = [f"core/cli.py:{n.lineno} {n.value}" for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in flags]
    assert not by_hand, f"declare these through _add_setting / _add_run_setting: {by_hand}"


# -- size --------------------------------------------------------------------------------------------------------
def test_no_file_over_400_lines_and_no_core_or_ui_function_over_80() -> None:
    too_long = []
    for path in sources("core", "ui", "pages", "app.py"):
        lines = len(path.read_text().splitlines())
        if lines > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(REPO)}: {lines} lines")
        if path.parts[-2] == "pages" or path.name == "app.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, too_long


def test_the_search_draws_hyperparameters_only() -> None:
    """The study's fixed conditions are declared searchable=False, and a space file asking for one is refused."""
    from core.errors import ConfigError
    from core.search.space import SEARCHABLE, check_space

    for name in ("backbone", "weights", "image_size", "seed", "tta", "val_fraction", "train_per_class"):
        assert name not in SEARCHABLE
        with pytest.raises(ConfigError, match=f"Unknown search parameter.*{name}"):
            check_space({name: [1, 2]})
    assert {"optimizer", "lr", "dropout", "batch_size"} <= set(SEARCHABLE)
    from core.search.space import DEFAULT_SPACE

    assert set(DEFAULT_SPACE) <= set(SEARCHABLE)  # the study's sweep searches only what may be searched
