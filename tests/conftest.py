"""Strict JAX settings for the whole suite (as Equinox does): implicit dtype promotion and rank
promotion are errors, and 8 CPU devices are simulated for sharding tests."""

import concurrent.futures
import os
import subprocess
import sys

import jax
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")  # before anything imports matplotlib

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def mini_cache(tmp_path_factory):
    """The workbench in its miniature configuration, built once per test session into a private
    cache (``RIEMANN_CACHE`` points there for the whole session)."""
    from analysis.pairs import workbench

    root = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("RIEMANN_CACHE", str(root))
    built = workbench.build("mini", progress=False, log=lambda s: None)
    yield built
    mp.undo()


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
    """Drop JAX's compiled-program caches after each test module. Clean-clone runs of the whole
    suite in one process crashed XLA (SIGABRT / SIGSEGV while compiling) after several hundred
    modules' worth of programs, at points that moved from run to run, while every file passes alone;
    a module's programs are not reused by the next one, so keeping them only grows the process."""
    yield
    jax.clear_caches()


# Tests marked ``isolated`` run in a child pytest process, one per module: mergekit (which loads
# sentencepiece, accelerate and PEFT) run in the suite's own process was followed, several hundred
# tests later, by XLA crashing while compiling (SIGABRT, then SIGSEGV on a rerun), while every file
# passes alone. In a child process the reference libraries cannot touch the process the rest runs in.
ISOLATED_CHILD = "RIEMANN_TEST_ISOLATED_CHILD"


def pytest_configure(config):
    config.addinivalue_line("markers", "isolated: run in a child pytest process (third-party reference libraries)")


class _Isolated(pytest.Item):
    """One module's ``isolated`` tests, run together in a child ``python -m pytest``.

    The children start as soon as collection ends, one at a time on a background thread, so that
    they overlap the rest of the suite (which is mostly single-threaded compilation); this item
    only waits for its own child's result."""

    def __init__(self, *, nodeids, **kwargs):
        super().__init__(**kwargs)
        self.nodeids = nodeids
        self.result: concurrent.futures.Future | None = None

    def start(self, pool: concurrent.futures.Executor) -> None:
        env = {**os.environ, ISOLATED_CHILD: "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *self.nodeids]
        self.result = pool.submit(
            subprocess.run, cmd, cwd=self.config.rootpath, env=env, capture_output=True, text=True
        )

    def runtest(self):
        r = self.result.result()
        if r.returncode != 0:
            raise AssertionError(f"child pytest exited with {r.returncode}:\n{r.stdout[-12000:]}\n{r.stderr[-4000:]}")

    def reportinfo(self):
        return self.path, None, f"{len(self.nodeids)} isolated tests of {self.path.name}"


def pytest_collection_modifyitems(session, config, items):
    if os.environ.get(ISOLATED_CHILD):
        return
    groups: dict = {}
    keep = []
    for item in items:
        if item.get_closest_marker("isolated") is not None:
            groups.setdefault(item.parent, []).append(item)
        else:
            keep.append(item)
    isolated = [
        _Isolated.from_parent(parent, name="isolated", nodeids=[i.nodeid for i in g]) for parent, g in groups.items()
    ]
    items[:] = keep + isolated


def pytest_collection_finish(session):
    """Start the children of the isolated groups that survived selection (``-k``, ``-m``)."""
    isolated = [item for item in session.items if isinstance(item, _Isolated)]
    if isolated and not session.config.option.collectonly:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="isolated-tests")
        for item in isolated:
            item.start(pool)
        pool.shutdown(wait=False)
