"""Fixtures shared by the analysis tests."""

import pytest

from analysis import workbench


@pytest.fixture(scope="session")
def mini_cache(tmp_path_factory):
    """The workbench in its miniature configuration, built once per test session into a private
    cache (``RIEMANN_CACHE`` points there for the whole session)."""
    root = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("RIEMANN_CACHE", str(root))
    built = workbench.build("mini", progress=False, log=lambda s: None)
    yield built
    mp.undo()
