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
ENTRY = {"cli", "commands", "worker", "tasks", "__main__"}  # core/*.py that only the app, the CLI and tests use


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


def test_core_folders_are_its_layers_and_imports_only_go_down() -> None:
    folders = {p.name for p in (REPO / "core").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS) - {"foundation", "entry"}, folders
    upward = []
    for path in sources("core"):
        me = layer_of(module_name(path))
        for other in (m for m in imported_modules(path) if m.startswith("core.")):
            if LAYERS.index(layer_of(other)) > LAYERS.index(me):
                upward.append(f"{path.relative_to(REPO)} ({me}) imports {other} ({layer_of(other)})")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_core_never_imports_streamlit_and_argparse_lives_in_the_cli() -> None:
    for path in sources("core"):
        imports = imported_modules(path)
        assert not any(m.split(".")[0] == "streamlit" for m in imports), path
        if path.name != "cli.py":
            assert "argparse" not in imports, f"{path}: argparse code belongs in core/cli.py"


def test_pages_start_and_signal_no_processes() -> None:
    for path in sources("pages", "app.py"):
        imports = imported_modules(path)
        assert not imports & {"subprocess", "signal", "multiprocessing"}, path
        assert "os.kill" not in path.read_text(), path


def test_only_the_registry_knows_a_backbone_by_name() -> None:
    names = set(BACKBONES)
    for path in sources("core", "ui", "pages", "app.py"):
        if path.parent.name == "backbones":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]
                assert not names & set(consts), f"{path}:{node.lineno} compares with a backbone name"


PRIVATE_MODULES = ("keras.src", "tensorflow.python", "streamlit.runtime")
PRIVATE_ATTRIBUTES = ("_storage", "_trial_id")


def test_private_apis_only_through_the_compat_modules() -> None:
    for path in sources("core", "ui", "pages", "app.py", "bench"):
        if path.name == "compat.py":
            continue
        for module in imported_modules(path):
            assert not module.startswith(PRIVATE_MODULES), f"{path} imports {module}: go through a compat module"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
                pytest.fail(f"{path}:{node.lineno} reads .{node.attr}: go through core/compat.py")


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
