"""The training tests' small prepared Multi30k slice and micro config, for the study tests."""

from tests.training.conftest import small_data  # noqa: F401  (a fixture)
