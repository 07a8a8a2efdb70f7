"""Optional test dependencies, and strict mode: in CI a missing one fails the run, never skips.

Some tests need what only `make test` installs: the Python packages of the `test` and `fast`
extras (playwright, ctranslate2; `make setup` installs them) and Debian's chromium at
/usr/bin/chromium (scripts/install_browser.sh, which `make test` runs). A test asks for one with

    ctranslate2 = require("ctranslate2")           # the module, imported
    chromium = require_executable("/usr/bin/chromium")

(in a test, a fixture or at module level). When it is missing the test is skipped on a developer's
machine, but FAILS in strict mode, with a message naming what is missing and how to install it.
Strict mode is on when the environment has CI=true (CI sets it) or STRICT=1; `make test`, which
installs everything, always runs strict.

The hooks below are the safety net, registered by tests/conftest.py: in strict mode any other
skip (a bare `pytest.importorskip`, a `skipif`, a skip while collecting a module) becomes a
failure too. Tests marked `gpu` are the one exception: they are skipped on a machine without
CUDA, strict or not.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

STRICT_VARIABLES = ("CI", "STRICT")
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})

MAKE_SETUP = (
    "`make setup` installs the optional test dependencies ('.[test,fast]'; `make test` runs it)"
)
# How to install each optional Python package the tests use, by its top-level name.
INSTALL_HINTS = {
    "ctranslate2": "it is the `fast` extra: `make setup` (or `.venv/bin/python -m pip install "
    "-e '.[fast]'`); `make test` runs it",
    "playwright": "it is in the `test` extra: `make setup` (or `.venv/bin/python -m pip install "
    "-e '.[test]'`); `make test` runs it; the test drives /usr/bin/chromium, never a browser "
    "Playwright downloads",
}
EXECUTABLE_HINTS = {
    "/usr/bin/chromium": "scripts/install_browser.sh installs it (Debian's chromium); "
    "`make test` runs that script",
}


def strict_mode(environ: Mapping[str, str] | None = None) -> bool:
    """True when CI=true or STRICT=1 (also "yes", "on", "1"/"true" for either) is set."""
    env = os.environ if environ is None else environ
    return any(env.get(name, "").strip().lower() in TRUE_VALUES for name in STRICT_VARIABLES)


def missing(message: str) -> NoReturn:
    """Skip (fail in strict mode) the current test, fixture or module because of `message`."""
    if strict_mode():
        pytest.fail(f"{message} [strict mode: CI=true or STRICT=1 forbids skipping]", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require(module: str) -> ModuleType:
    """The optional module `module`, imported; if it cannot be imported, skip, or fail in strict
    mode, with how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        error = e  # reported below, outside this handler, without the import's traceback
    hint = INSTALL_HINTS.get(module.partition(".")[0], MAKE_SETUP)
    missing(f"the optional Python package {module!r} cannot be imported ({error}); {hint}")


def require_executable(path: str | Path) -> Path:
    """The program at `path`; if it is not there (or not executable), skip, or fail in strict
    mode, with how to install it."""
    program = Path(path)
    if not (program.is_file() and os.access(program, os.X_OK)):
        hint = EXECUTABLE_HINTS.get(str(program), MAKE_SETUP)
        missing(f"{program} is missing or not executable; {hint}")
    return program


# ------------------------------------------------------------------------------- the hooks


def _is_gpu_test(item: pytest.Item) -> bool:
    return item.get_closest_marker("gpu") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` are skipped on a machine without CUDA (in strict mode too)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available here")
    for item in items:
        if _is_gpu_test(item):
            item.add_marker(skip)


def _strict_failure(reason: str) -> str:
    return (
        f"skipped in strict mode (CI=true or STRICT=1), which fails every skip but those of "
        f"gpu tests: {reason}\nInstall the optional test dependencies: `make test` does it all "
        f"(`make setup` for the Python packages, scripts/install_browser.sh for chromium); a "
        f"test that needs one should ask for it with tests/optional.py's require()."
    )


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return f"{longrepr[2]} ({longrepr[0]}:{longrepr[1]})"
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Strict mode: a skipped test that is not a gpu test fails instead."""
    report = yield
    if (
        report.skipped
        and not hasattr(report, "wasxfail")  # an expected failure is not a skip
        and not _is_gpu_test(item)
        and strict_mode()
    ):
        report.longrepr = _strict_failure(_skip_reason(report))
        report.outcome = "failed"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """Strict mode: a module (or class) skipped while it is collected fails instead."""
    report = yield
    if report.skipped and strict_mode():
        report.longrepr = _strict_failure(_skip_reason(report))
        report.outcome = "failed"
    return report
