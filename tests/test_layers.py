"""What may import what (ARCHITECTURE.md, "Layers, and what may import what"), read from the source.

Every module under src/transformer is parsed (not imported); each of its `transformer.*` imports,
at module level or inside a function, is checked against four rules:

- layers: a module imports only from its own layer or below (the table LAYERS, bottom first);
- the version comes from `transformer.version` (package metadata), never from the package root;
- an engine (`transformer.decoding`) reads the export format from its leaf module, never from the
  exporter (`transformer.export`);
- a command module (`*.cli`) is imported only by command modules: library code calls library
  functions, not another command's.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "transformer"

# Bottom first. A module belongs to the layer of the longest entry listed here that names it or
# a package above it (the root `transformer` names only itself), except that every `cli` module
# (a subcommand's arguments and output) is an application, whatever package it lives in.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "transformer.config",
            "transformer.hardware",
            "transformer.io",
            "transformer.vocab",
            "transformer.version",
            "transformer.ct2_format",
        ),
    ),
    ("model and data", ("transformer.model", "transformer.data", "transformer.modeldir")),
    (
        "training, decoding, export",
        (
            "transformer.training",
            "transformer.decoding",
            "transformer.export",
            "transformer.evaluation",
        ),
    ),
    # The package root is a facade: it re-exports the model and, lazily, the two facades.
    ("facades", ("transformer", "transformer.translator", "transformer.classifier")),
    (
        "applications",
        (
            "transformer.cli",
            "transformer.__main__",
            "transformer.classify",
            "transformer.serve",
            "transformer.study",
            "transformer.visualize",
        ),
    ),
]
APPLICATIONS = len(LAYERS) - 1
# Modules that run a subcommand, besides `transformer.cli`'s COMMANDS (which lists them all).
ENTRY_POINTS = {"transformer.cli", "transformer.__main__"}
# Leaf modules: read by several layers, so they import nothing of the project.
LEAVES = ("transformer.ct2_format", "transformer.version")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").is_file()


def layer_of(module: str) -> int | None:
    """The index in LAYERS of `module`'s layer; None when no entry of LAYERS covers it."""
    if module.rsplit(".", 1)[-1] == "cli":
        return APPLICATIONS
    covering = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or (prefix != "transformer" and module.startswith(prefix + "."))
    ]
    return max(covering)[1] if covering else None


@dataclass(frozen=True)
class Import:
    line: int
    module: str  # the module of the project it names
    names: tuple[str, ...] = ()  # for `from transformer import ...`: the names taken from the root


def project_imports(module: str, source: str, known: set[str]) -> list[Import]:
    """Every import of a `transformer` module in `source` (module `module`), wherever it stands.

    `from P import n` names the module P.n when that is a module of the project (`known`), else
    P; relative imports are resolved against `module`'s package.
    """
    package = module if module in known and is_package(module) else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [
                Import(node.lineno, a.name)
                for a in node.names
                if a.name.split(".")[0] == "transformer"
            ]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "transformer":
                continue
            rest = []
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    found.append(Import(node.lineno, sub))
                else:
                    rest.append(alias.name)
            if rest:
                found.append(Import(node.lineno, target, tuple(rest)))
    return found


def root_version_uses(source: str) -> list[int]:
    """Lines that read `transformer.__version__` as an attribute of the package root."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and node.attr == "__version__"
        and isinstance(node.value, ast.Name)
        and node.value.id == "transformer"
    ]


def command_modules() -> set[str]:
    from transformer.cli import COMMANDS

    return ENTRY_POINTS | {module for module, _ in COMMANDS.values()}


def violations(module: str, source: str, known: set[str], commands: set[str]) -> list[str]:
    """Each import of `module` that breaks a rule of this file, naming both modules and why."""
    here = layer_of(module)
    assert here is not None, f"{module}: in no layer; add it to LAYERS in {__file__}"
    found = []
    for imp in project_imports(module, source, known):
        what = f"{module} (line {imp.line}) imports {imp.module}"
        there = layer_of(imp.module)
        if there is None:
            found.append(f"{what}: a module in no layer of LAYERS")
        elif there > here:
            found.append(
                f"{what}: layer '{LAYERS[here][0]}' must not import the higher layer "
                f"'{LAYERS[there][0]}'"
            )
        if imp.module == "transformer" and "__version__" in imp.names:
            found.append(f"{what}: take __version__ from transformer.version (package metadata)")
        if (module + ".").startswith("transformer.decoding.") and (imp.module + ".").startswith(
            "transformer.export."
        ):
            found.append(
                f"{what}: an engine reads the export format from transformer.ct2_format, "
                "not from the exporter"
            )
        if imp.module.rsplit(".", 1)[-1] == "cli" and module not in commands:
            found.append(
                f"{what}: a command module, which only command modules may import (move what "
                "is shared into a library module)"
            )
    found += [
        f"{module} (line {line}) reads transformer.__version__: take it from transformer.version"
        for line in root_version_uses(source)
    ]
    return found


# ------------------------------------------------------------------------------------ the tree


def test_every_module_is_in_a_layer() -> None:
    assert len(MODULES) > 40  # the tree was found
    unplaced = [m for m in MODULES if layer_of(m) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_its_layer_or_below(module: str) -> None:
    source = MODULES[module].read_text(encoding="utf-8")
    problems = violations(module, source, set(MODULES), command_modules())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_modules_import_nothing_of_the_project(leaf: str) -> None:
    source = MODULES[leaf].read_text(encoding="utf-8")
    assert project_imports(leaf, source, set(MODULES)) == []


def test_only_the_version_module_sets_the_version() -> None:
    setters = {
        module
        for module, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Assign | ast.AnnAssign)
        and any(
            isinstance(t, ast.Name) and t.id == "__version__"
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        )
    }
    assert setters == {"transformer.version"}


def test_the_version_is_the_installed_distributions() -> None:
    import transformer
    from transformer.version import __version__

    assert __version__ == importlib.metadata.version("transformer")
    assert transformer.__version__ == __version__


def test_the_engine_and_the_format_module_do_not_import_the_exporter() -> None:
    """Imported in a fresh interpreter: neither pulls in the exporter (nor ctranslate2)."""
    code = (
        "import json, sys\n"
        "import transformer.ct2_format\n"
        "after_format = sorted(sys.modules)\n"
        "import transformer.decoding.ct2_engine\n"
        "print(json.dumps([after_format, sorted(sys.modules)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    after_format, after_engine = json.loads(out)
    assert "transformer.ct2_format" in after_format
    assert "transformer.decoding.ct2_engine" in after_engine
    for loaded in (after_format, after_engine):
        assert not [
            m for m in loaded if m == "transformer.export" or m.startswith("transformer.export.")
        ]
        assert "ctranslate2" not in loaded


# ------------------------------------------------------------------------------ the checker


KNOWN = set(MODULES)
COMMANDS = {"transformer.cli", "transformer.decoding.cli", "transformer.study.cli"}


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        # a lower layer importing a higher one, at module level and inside a function
        (
            "transformer.training.validation",
            "from transformer.translator import Translator\n",
            "transformer.training.validation (line 1) imports transformer.translator: layer "
            "'training, decoding, export' must not import the higher layer 'facades'",
        ),
        (
            "transformer.model.layers",
            "def f():\n    import transformer.decoding.search\n",
            "transformer.model.layers (line 2) imports transformer.decoding.search: layer "
            "'model and data' must not import the higher layer 'training, decoding, export'",
        ),
        (
            "transformer.config",
            "from transformer import Transformer\n",
            "imports transformer: layer 'foundation' must not import the higher layer 'facades'",
        ),
        (
            "transformer.decoding.generate",
            "from ..serve import app\n",
            "imports transformer.serve.app: layer 'training, decoding, export' must not import "
            "the higher layer 'applications'",
        ),
        # the version from the package root, even where the layers allow the root
        (
            "transformer.cli",
            "from transformer import __version__\n",
            "transformer.cli (line 1) imports transformer: take __version__ from "
            "transformer.version",
        ),
        (
            "transformer.serve.app",
            "import transformer\nVERSION = transformer.__version__\n",
            "transformer.serve.app (line 2) reads transformer.__version__",
        ),
        # the engine reading constants from the exporter (the same layer)
        (
            "transformer.decoding.ct2_engine",
            "from transformer.export.ct2 import EXPORT_FILE\n",
            "imports transformer.export.ct2: an engine reads the export format from "
            "transformer.ct2_format",
        ),
        # library code importing a command module (the same layer)
        (
            "transformer.study.runner",
            "def train_row():\n    from transformer.training.cli import prepare_run_dir\n",
            "transformer.study.runner (line 2) imports transformer.training.cli: a command module",
        ),
        # a module that no layer names
        (
            "transformer.training.trainer",
            "import transformer.nowhere\n",
            "imports transformer.nowhere: a module in no layer of LAYERS",
        ),
    ],
)
def test_the_checker_reports_each_kind_of_violation(
    module: str, source: str, expected: str
) -> None:
    problems = violations(module, source, KNOWN, COMMANDS)
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("transformer.decoding.generate", "from transformer.model import Transformer\n"),
        ("transformer.training.validation", "from transformer.decoding.engine import x\n"),
        ("transformer.decoding.ct2_engine", "from transformer.ct2_format import EXPORT_FILE\n"),
        ("transformer.translator", "from transformer import ModelConfig\n"),
        ("transformer.visualize", "from transformer import Translator\n"),
        ("transformer.study.cli", "from transformer.decoding.cli import add_decoding\n"),
        ("transformer.export.ct2", "from transformer.version import __version__\n"),
        ("transformer.io", "import json\nfrom . import vocab\nfrom pathlib import Path\n"),
    ],
)
def test_the_checker_accepts_allowed_imports(module: str, source: str) -> None:
    assert violations(module, source, KNOWN, COMMANDS) == []
