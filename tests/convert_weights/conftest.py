"""Fixtures for the port tests: one tiny random transformers NLD model per session."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long test, run only when NEMODIFF_SLOW=1")


@pytest.fixture(scope="session")
def ref():
    from tests.hf_reference import TorchNLD

    return TorchNLD(seed=0)
