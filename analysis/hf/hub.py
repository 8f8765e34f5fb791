"""Checkpoint references: a local directory, or a Hugging Face Hub id ``org/name[@revision]``
resolved to a snapshot directory of the Hub's local cache.

:func:`resolve` turns either into a directory. A directory that exists is returned as given (it
wins over a Hub id of the same spelling, as in ``transformers``). A Hub id is looked up in the cache
first, without the network; only when the cache lacks it (or part of it) and the network is allowed
is it downloaded there, and then only safetensors weights, configs, tokenizer files and LoRA adapter
files: pickle-based weights (``*.bin``, ``*.pt``, ...) never are, since loading them can run
arbitrary code. A branch or tag follows the cache's ``refs/<name>``; a commit is given in full (40
hex digits); a shortened one is refused, since the cache names snapshots by the full hash.

A branch or tag already in the cache (``@main`` included, which a bare ``org/name`` means) is used as
cached, without asking the Hub whether it has moved since: runs stay offline and reproducible, and a
newer upstream commit is not picked up by itself. To get it, name the commit (``org/name@<commit>``)
or remove the repo's folder (``models--org--name``) from the cache.

``resolve(ref, weights=False)`` asks for the configuration only — ``config.json``, or an adapter
repo's ``adapter_config.json`` — and when it downloads, it fetches those and the tokenizer files, never
weights; so every check that needs no tensor header (architectures, adapter options, the data and its
tokens) can refuse bad input before gigabytes are fetched. ``describe`` names a directory by the
reference the user typed as well, for error messages.

The environment is read at each call, not at import as ``huggingface_hub`` reads its own (so a
variable set later, in a notebook, a test or a launcher, still counts), and passed explicitly:

- ``HF_HUB_CACHE`` (legacy ``HUGGINGFACE_HUB_CACHE``), else ``$HF_HOME/hub``, else
  ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``: the cache.
- ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``): never use the network.
- ``HF_ENDPOINT`` and ``HF_HUB_ETAG_TIMEOUT``: where the Hub is and how long to wait for it.

Several processes each resolve on their own (each with its own cache); what they read is then
compared by content, not by path.

Not thread-safe while downloading: ``huggingface_hub`` (2.4) reads ``HF_HUB_OFFLINE`` once, at its
import, into ``huggingface_hub.constants.HF_HUB_OFFLINE``, and ``snapshot_download`` has no argument to
override it per call (``local_files_only`` can only forbid the network, not allow it). A download
therefore sets that module constant to False for its duration and restores it afterwards; another
thread using ``huggingface_hub`` at the same time sees the network allowed meanwhile, and two
concurrent downloads may restore it in the wrong order. Resolve from one thread (what is cached is
read without touching it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from analysis.hf.safetensors_file import CheckpointError

# Mirrors huggingface_hub's rules for a repo id (letters, digits, '_', '-', '.'; no '--' or '..';
# no '-' or '.' at either end; at most 96 characters), here with the namespace required.
_PART = r"(?![.-])(?!.*(?:--|\.\.))[\w.-]{1,96}(?<![.-])"
_ID = re.compile(rf"(?P<repo>{_PART}/{_PART})(?:@(?P<revision>[\w.\-/]+))?")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHORT_COMMIT = re.compile(r"[0-9a-f]{7,39}")
DEFAULT_REVISION = "main"
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_ETAG_TIMEOUT = 10.0
# Downloaded from a repo: root files only (subfolders such as ``original/`` hold other formats).
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "adapter_config.json", "adapter_model.safetensors")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.ckpt", "*.pkl", "*.pickle")
# Never downloaded: pickles, subfolders, and Mistral's consolidated.safetensors (the same weights
# again in another layout, gigabytes this loader does not read).
IGNORE_PATTERNS = (*PICKLE_PATTERNS, "*/*", "consolidated*.safetensors")


@dataclasses.dataclass(frozen=True)
class HubId:
    """A model repo on the Hub and an optional revision (branch, tag or full commit hash)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id if self.revision is None else f"{self.repo_id}@{self.revision}"

    @property
    def folder(self) -> str:
        """The repo's folder in the cache, as huggingface_hub names it."""
        return "models--" + self.repo_id.replace("/", "--")


@dataclasses.dataclass(frozen=True)
class Located:
    """Where a checkpoint reference led: ``path`` is the directory to read; for a Hub id, ``hub_id``
    is the id as given and ``commit`` the snapshot's commit."""

    path: Path
    hub_id: HubId | None = None
    commit: str | None = None

    @property
    def pinned(self) -> str | None:
        """``org/name@<commit>``: the id that names exactly these files (None for a directory)."""
        return None if self.hub_id is None else f"{self.hub_id.repo_id}@{self.commit}"


def parse(ref: str | os.PathLike) -> HubId | None:
    """The Hub id ``ref`` spells, or None. Only a ``str`` can be an id: a ``Path`` is a path.

    >>> parse("meta-llama/Meta-Llama-3-8B@main")
    HubId(repo_id='meta-llama/Meta-Llama-3-8B', revision='main')
    >>> parse("./missing/dir") is None and parse("a/b/c") is None
    True
    """
    if not isinstance(ref, str):
        return None
    m = _ID.fullmatch(ref)
    if m is None:
        return None
    revision = m["revision"]
    if revision is not None and (revision.startswith("/") or revision.endswith("/") or ".." in revision.split("/")):
        return None  # it names a file under refs/, so nothing may step out of it
    return HubId(m["repo"], revision)


def cache_dir() -> Path:
    """The Hub cache the environment names now (same precedence as huggingface_hub)."""

    def expand(p: str) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(p)))

    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return expand(os.environ[name])
    if os.environ.get("HF_HOME"):
        return expand(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return expand(xdg) / "huggingface" / "hub"


def offline() -> bool:
    """Whether the environment forbids the network now (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ("1", "ON", "YES", "TRUE")


def resolve(ref: str | os.PathLike, *, weights: bool = True) -> Path:
    """The local directory of a checkpoint reference: ``ref`` itself if it is a directory, else the
    cached (or, network allowed, downloaded) snapshot of the Hub id ``org/name[@revision]``.

    With ``weights=False`` a snapshot needs only its ``config.json`` (for planning from shapes), or
    for a LoRA adapter repo its ``adapter_config.json``; a download then fetches those and the
    tokenizer files, no weights. Errors (:class:`CheckpointError`) name ``ref``; for an id also the
    revision and the cache tried.
    """
    return locate(ref, weights=weights).path


def describe(ref: str | os.PathLike, path: str | os.PathLike) -> str:
    """``path`` (a directory :func:`resolve` gave for ``ref``, or a file in it) for an error message:
    ``org/name (…/snapshots/<sha>/file)`` where ``ref`` is a Hub id, else the path alone.

    >>> describe("org/dora", "/c/models--org--dora/snapshots/abc/adapter_config.json")
    'org/dora (/c/models--org--dora/snapshots/abc/adapter_config.json)'
    >>> describe(Path("/some/dir"), "/some/dir/config.json")
    '/some/dir/config.json'
    """
    if parse(ref) is not None and not Path(ref).is_dir():
        return f"{ref} ({os.fspath(path)})"
    return os.fspath(path)


def locate(ref: str | os.PathLike, *, weights: bool = True) -> Located:
    """Like :func:`resolve`, also saying which Hub id and commit the directory is."""
    if Path(ref).is_dir():
        return Located(Path(ref))
    hub_id = parse(ref)
    if hub_id is None:
        raise CheckpointError(
            f"{os.fspath(ref)!r}: no such directory, and not a Hub id org/name[@revision]; expected a "
            "checkpoint directory or a Hugging Face Hub model id such as meta-llama/Meta-Llama-3-8B@main"
        )
    revision = hub_id.revision or DEFAULT_REVISION
    cache = cache_dir()
    if _SHORT_COMMIT.fullmatch(revision) and not (cache / hub_id.folder / "refs" / revision).is_file():
        raise CheckpointError(
            f"{ref!r}: revision {revision!r} looks like a shortened commit hash; give all 40 hex digits "
            "(the cache names snapshots by the full hash), or a branch or tag name"
        )
    snapshot = _cached(cache, hub_id)
    reason, downloaded = None, False
    if snapshot is None or _missing(snapshot, weights):
        if offline():
            reason = "HF_HUB_OFFLINE is set, so the Hub was not asked"
        else:
            got = _download(ref, hub_id, cache, weights)
            if isinstance(got, Path):
                snapshot, downloaded = got, True
            else:  # why the Hub could not be reached; the cache may still hold part of it
                snapshot, reason = _cached(cache, hub_id), got
    where = f"{hub_id.repo_id} at revision {revision} (cache {cache})"
    fix = (
        "Download it once where the network is allowed (HF_HUB_OFFLINE unset), or point HF_HUB_CACHE "
        "(or HF_HOME) at a cache that holds it"
    )
    if snapshot is None:
        raise CheckpointError(f"{ref!r}: not a local directory, and {where} is not cached: {reason}. {fix}.")
    if weights:  # planning from config.json alone does not care what format the weights are in
        _refuse_pickles(ref, hub_id, snapshot)
    missing = _missing(snapshot, weights)
    if missing and downloaded:  # the Hub itself has no such files (pickles are never fetched)
        raise CheckpointError(
            f"{ref!r}: {hub_id.repo_id} at revision {revision} on the Hub has no {', '.join(missing)} "
            f"(downloaded into {snapshot}: configs, tokenizer and safetensors files only, since this toolkit "
            "never unpickles weights)"
        )
    if missing:
        raise CheckpointError(
            f"{ref!r}: the cached snapshot {snapshot} of {where} lacks {', '.join(missing)}"
            f"{f': {reason}' if reason else ''}. {fix}."
        )
    return Located(snapshot, hub_id, snapshot.name)


def _cached(cache: Path, hub_id: HubId) -> Path | None:
    """The snapshot directory the cache holds for ``hub_id`` (complete or not), without the network."""
    storage = cache / hub_id.folder
    revision = hub_id.revision or DEFAULT_REVISION
    commit = revision if _COMMIT.fullmatch(revision) else None
    ref_file = storage / "refs" / revision
    if commit is None and ref_file.is_file():
        commit = ref_file.read_text().strip()
    if commit is None or not _COMMIT.fullmatch(commit):
        return None
    snapshot = storage / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _missing(snapshot: Path, weights: bool) -> list[str]:
    """The files ``snapshot`` needs but lacks (a link whose blob is gone counts as missing)."""
    if not weights:  # a model's config, or an adapter repo's (which has no config.json)
        found = (snapshot / "config.json").is_file() or (snapshot / "adapter_config.json").is_file()
        return [] if found else ["config.json"]
    if (snapshot / "adapter_config.json").is_file():  # a LoRA adapter repo
        return [] if (snapshot / "adapter_model.safetensors").is_file() else ["adapter_model.safetensors"]
    missing = [] if (snapshot / "config.json").is_file() else ["config.json"]
    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError):
            shards = []  # the loader names a broken index; here only presence matters
        return missing + [s for s in shards if not (snapshot / s).is_file()]
    if not (snapshot / "model.safetensors").is_file():
        missing.append("model.safetensors (or model.safetensors.index.json and its shards)")
    return missing


def _refuse_pickles(ref: str | os.PathLike, hub_id: HubId, snapshot: Path) -> None:
    if any(snapshot.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in PICKLE_PATTERNS for p in snapshot.glob(pattern))
    if pickles:
        raise CheckpointError(
            f"{ref!r}: {hub_id.repo_id} (cached at {snapshot}) has no safetensors weights, only pickle-based "
            f"ones ({', '.join(pickles)}); loading those can run arbitrary code, so this toolkit never "
            "unpickles. Use a revision or repo that has safetensors (the Hub's conversion bot opens them as "
            "refs/pr/N), or convert once where you trust the file."
        )


def _download(ref: str | os.PathLike, hub_id: HubId, cache: Path, weights: bool) -> Path | str:
    """The snapshot directory after downloading what the cache lacks; or a sentence saying why the Hub
    could not be reached (the caller then reports what the cache holds). Errors the Hub gives about
    the repo or revision themselves are raised, naming ``ref``."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from analysis.hf.checkpoints import TOKENIZER_FILES  # imported here: checkpoints imports this module

    # Without weights: the configs and the tokenizer (small files; the data is tokenized before any
    # weights are fetched), adapter_config.json in case the repo is an adapter.
    allow = ["config.json", *TOKENIZER_FILES, *(WEIGHT_PATTERNS if weights else ("adapter_config.json",))]
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_ETAG_TIMEOUT)
    # huggingface_hub reads HF_HUB_OFFLINE once, at its import (perhaps by transformers, while it was
    # set), and has no argument for it; the caller read it now and found the network allowed. Not
    # thread-safe (see the module's docstring).
    was_offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False
    try:
        path = snapshot_download(
            hub_id.repo_id,
            revision=hub_id.revision or DEFAULT_REVISION,
            cache_dir=cache,
            endpoint=endpoint,
            etag_timeout=timeout,
            allow_patterns=allow,
            ignore_patterns=list(IGNORE_PATTERNS),
        )
    except RevisionNotFoundError:
        raise CheckpointError(
            f"{ref!r}: {hub_id.repo_id} has no revision {hub_id.revision or DEFAULT_REVISION!r} on {endpoint}"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise CheckpointError(
            f"{ref!r}: no such directory, and {endpoint} has no model repo {hub_id.repo_id} that you may read "
            "(private or gated repos need a token: `hf auth login` or HF_TOKEN)"
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, *_transport_errors()) as e:
        cause = e.__cause__ or e
        first = (str(cause).splitlines() or [""])[0]
        return f"the Hub at {endpoint} could not be reached, or the download failed ({type(cause).__name__}: {first})"
    finally:
        constants.HF_HUB_OFFLINE = was_offline
    return Path(path)


def _transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP client's network errors (a dropped connection mid-download): ``httpx2`` under
    huggingface_hub 2, ``httpx`` under 1; neither is ours to depend on directly."""
    import importlib

    found = []
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)
