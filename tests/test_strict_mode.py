"""Strict mode (tests/optional.py): with CI=true or STRICT=1 a missing optional dependency fails
a test instead of skipping it, and so does any other skip but that of a gpu test.

Each case runs pytest in this process (the `pytester` plugin) on a small generated test file
whose conftest registers the same hooks as tests/conftest.py, once in strict mode and once not.
"""

from __future__ import annotations

import pytest
import torch

from tests.optional import require, require_executable, strict_mode

pytest_plugins = ["pytester"]

ABSENT = "no_such_module_for_the_strict_mode_test"

CONFTEST = """
from tests.optional import (  # noqa: F401
    pytest_collection_modifyitems,
    pytest_make_collect_report,
    pytest_runtest_makereport,
)
"""

# name -> (test file, outcome counts in strict mode, outcome counts otherwise)
CASES = {
    "require_in_a_test": (
        f"""
from tests.optional import require

def test_needs_it():
    require("{ABSENT}")
""",
        dict(failed=1),
        dict(skipped=1),
    ),
    "require_in_a_fixture": (
        f"""
import pytest
from tests.optional import require

@pytest.fixture(scope="session")
def engine():
    return require("{ABSENT}.engine")

def test_needs_it(engine):
    pass
""",
        dict(errors=1),
        dict(skipped=1),
    ),
    "require_executable": (
        """
from tests.optional import require_executable

def test_needs_it():
    require_executable("/no/such/dir/chromium")
""",
        dict(failed=1),
        dict(skipped=1),
    ),
    "bare_importorskip_in_a_test": (
        f"""
import pytest

def test_needs_it():
    pytest.importorskip("{ABSENT}")
""",
        dict(failed=1),
        dict(skipped=1),
    ),
    "bare_importorskip_at_module_level": (
        f"""
import pytest

pytest.importorskip("{ABSENT}")

def test_needs_it():
    pass
""",
        dict(errors=1),
        dict(skipped=1),
    ),
    "skipif_mark": (
        """
import pytest

@pytest.mark.skipif(True, reason="something optional is missing")
def test_needs_it():
    pass
""",
        dict(errors=1),  # a mark skips in the setup phase, so the test errors there
        dict(skipped=1),
    ),
    "gpu_test_without_cuda": (
        """
import pytest

@pytest.mark.gpu
def test_on_cuda():
    assert False, "a gpu test ran on a machine without CUDA"

@pytest.mark.gpu
def test_on_cuda_with_an_optional_package():
    pytest.importorskip("no_such_gpu_package")
""",
        dict(skipped=2),
        dict(skipped=2),
    ),
    "other_outcomes_unchanged": (
        """
import pytest
from tests.optional import require

def test_present():
    assert require("json").dumps([1]) == "[1]"

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False

def test_failure():
    assert False
""",
        dict(passed=1, xfailed=1, failed=1),
        dict(passed=1, xfailed=1, failed=1),
    ),
}


def run_case(pytester: pytest.Pytester, monkeypatch, name: str, strict: bool):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("STRICT", raising=False)
    if strict:
        monkeypatch.setenv("STRICT", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs a CUDA device\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(**{f"test_{name}": CASES[name][0]})
    return pytester.runpytest("-p", "no:cacheprovider", "--strict-markers", "-rA")


@pytest.mark.parametrize("name", list(CASES))
def test_strict_mode_fails_every_skip_but_gpu(pytester, monkeypatch, name):
    result = run_case(pytester, monkeypatch, name, strict=True)
    result.assert_outcomes(**CASES[name][1])


@pytest.mark.parametrize("name", list(CASES))
def test_without_strict_mode_the_same_tests_skip(pytester, monkeypatch, name):
    result = run_case(pytester, monkeypatch, name, strict=False)
    result.assert_outcomes(**CASES[name][2])


def test_the_failure_names_what_is_missing_and_how_to_install_it(pytester, monkeypatch):
    output = run_case(pytester, monkeypatch, "require_in_a_test", strict=True).stdout.str()
    assert ABSENT in output
    assert "make setup" in output and "make test" in output
    assert "STRICT=1" in output

    output = run_case(pytester, monkeypatch, "require_executable", strict=True).stdout.str()
    assert "/no/such/dir/chromium is missing" in output


def test_a_bare_skip_fails_with_its_reason_in_strict_mode(pytester, monkeypatch):
    output = run_case(pytester, monkeypatch, "bare_importorskip_at_module_level", strict=True)
    text = output.stdout.str()
    assert "skipped in strict mode" in text
    assert ABSENT in text  # importorskip's reason
    assert "make test" in text


@pytest.mark.parametrize(
    "environ,strict",
    [
        ({}, False),
        ({"CI": "true"}, True),
        ({"CI": "True"}, True),
        ({"CI": "false"}, False),
        ({"CI": ""}, False),
        ({"STRICT": "1"}, True),
        ({"STRICT": "0"}, False),
        ({"CI": "false", "STRICT": "1"}, True),
    ],
)
def test_strict_mode_is_read_from_ci_and_strict(environ, strict):
    assert strict_mode(environ) is strict


def test_require_returns_what_is_present(monkeypatch):
    monkeypatch.setenv("STRICT", "1")
    assert require("json.decoder").JSONDecodeError.__name__ == "JSONDecodeError"
    assert require_executable("/bin/sh").name == "sh"
