"""Strict JAX settings for the whole suite (as Equinox does): implicit dtype promotion and rank
promotion are errors, and 8 CPU devices are simulated for sharding tests."""

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys

import filelock
import jax
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")  # before anything imports matplotlib

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def once_per_run(request, tmp_path_factory):
    """``with once_per_run(name) as path:`` gives a directory that every pytest-xdist worker of this
    run shares (the suite runs with ``-n 2``), held under a file lock while the block fills it: the
    first worker to get there builds what the directory is for, the others wait and find it built.
    Without xdist it is this session's own directory."""
    base = tmp_path_factory.getbasetemp()
    if hasattr(request.config, "workerinput"):  # each worker's base lies in the run's directory
        base = base.parent

    @contextlib.contextmanager
    def shared(name: str):
        path = base / name
        with filelock.FileLock(f"{path}.lock"):
            path.mkdir(exist_ok=True)
            yield path

    return shared


@pytest.fixture(scope="session")
def mini_cache(once_per_run):
    """The workbench in its miniature configuration, built once per test run into a private cache
    (``RIEMANN_CACHE`` points there for the whole session); a worker that finds it built verifies
    its hashes and reuses it."""
    from analysis.pairs import workbench

    mp = pytest.MonkeyPatch()
    with once_per_run("workbench-cache") as root:
        mp.setenv("RIEMANN_CACHE", str(root))
        built = workbench.build("mini", progress=False, log=lambda s: None)
    yield built
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _private_compile_cache(tmp_path_factory):
    """The commands' on-disk cache of compiled programs (analysis.jobs.compile_cache) in a directory of
    this session's, never the user's; the processes tests start share it through the environment.
    Each xdist worker has its own: JAX writes an entry in place, and a worker reading an entry
    another is still writing would warn, which this suite turns into an error."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RIEMANN_XLA_CACHE", str(tmp_path_factory.mktemp("xla")))
    yield
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


class _Children:
    """The isolated groups' child processes: run one at a time on a background thread, and stopped
    (queued ones cancelled, the running one killed with its process group) when the session ends
    early — ``-x``, a collection error, Ctrl-C, ``--setup-plan`` — so that nothing outlives it."""

    def __init__(self):
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="isolated-tests")
        self.running: set[subprocess.Popen] = set()
        self.stopped = False

    def run(self, cmd, **kwargs) -> subprocess.CompletedProcess:
        if self.stopped:
            raise RuntimeError("the session ended before this child started")
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
        )
        self.running.add(proc)
        try:
            out, err = proc.communicate()
        finally:
            self.running.discard(proc)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def stop(self) -> None:
        self.stopped = True
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(self.running):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


class _Isolated(pytest.Item):
    """One module's ``isolated`` tests, run together in a child ``python -m pytest``.

    Without xdist the children start as soon as collection ends, one at a time on a background
    thread, so that they overlap the rest of the suite (which is mostly single-threaded
    compilation); this item only waits for its own child's result. Under xdist every worker
    collects every item, so a child starts only when its item runs, in the worker that runs it."""

    def __init__(self, *, nodeids, **kwargs):
        super().__init__(**kwargs)
        self.nodeids = nodeids
        self.result: concurrent.futures.Future | None = None

    def start(self, children: _Children) -> None:
        env = {**os.environ, ISOLATED_CHILD: "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *self.nodeids]
        self.result = children.pool.submit(children.run, cmd, cwd=self.config.rootpath, env=env)

    def runtest(self):
        if self.result is None:
            self.start(self.config.stash.setdefault(_CHILDREN, _Children()))
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
    """Start the children of the isolated groups that survived selection (``-k``, ``-m``), unless
    no test will run or this is an xdist worker (which has not been told its items yet)."""
    opt = session.config.option
    isolated = [item for item in session.items if isinstance(item, _Isolated)]
    if not isolated or opt.collectonly or opt.setuponly or opt.setupplan or session.testsfailed:
        return
    if hasattr(session.config, "workerinput"):
        return
    children = session.config.stash.setdefault(_CHILDREN, _Children())
    for item in isolated:
        item.start(children)


def pytest_sessionfinish(session):
    children = session.config.stash.get(_CHILDREN, None)
    if children is not None:
        children.stop()


_CHILDREN = pytest.StashKey[_Children]()
