"""A stand-in for the Hugging Face Hub on 127.0.0.1: just what ``huggingface_hub.snapshot_download``
(2.x) asks of a model repo, answered as the Hub answers it, with every request logged.

- ``GET /api/models/{repo}/revision/{rev}`` (``repo_info``): JSON with ``id``, ``sha``, ``siblings``.
- ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``list_repo_tree``): the recursive listing, files
  with ``oid`` (git blob id), ``size`` and, for LFS files, ``lfs`` (sha256, size, pointer size).
- ``HEAD``/``GET /{repo}/resolve/{rev}/{file}``: a small file answers 200 with ``ETag`` (its git blob
  id), ``X-Repo-Commit`` and ``Content-Length``; an LFS file (``*.safetensors``, ``*.bin``, ``*.pth``)
  answers 302 to a second server standing for the CDN (another origin, so the client does not follow
  the HEAD there), with ``X-Linked-Etag`` (its sha256) and ``X-Linked-Size``.
- Errors as the Hub spells them, in ``X-Error-Code``: ``RepoNotFound`` (401, as for an anonymous
  client), ``RevisionNotFound`` (404), ``EntryNotFound`` (404, with ``X-Repo-Commit``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

LFS = (".safetensors", ".bin", ".pth")
_REVISION = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)")
_TREE = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?")
_RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)")
_CDN = re.compile(r"/cdn/(?P<sha256>[0-9a-f]{64})")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _pointer(data: bytes) -> bytes:
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


class FakeHub:
    """Repos of commits (``{path: bytes}``) and refs; ``url`` is the endpoint, ``log`` the requests
    made, as ``(server, method, path)`` with ``server`` "hub" or "cdn". Use as a context manager."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.log: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    def add(self, repo_id: str, files: dict[str, bytes], refs: tuple[str, ...] = ("main",)) -> str:
        """Commit ``files`` to ``repo_id``, pointing each of ``refs`` at it; returns the commit hash."""
        listing = json.dumps([repo_id, sorted((p, git_blob_id(d)) for p, d in files.items())])
        commit = hashlib.sha1(listing.encode()).hexdigest()
        repo = self.repos.setdefault(repo_id, {"commits": {}, "refs": {}})
        repo["commits"][commit] = dict(files)
        repo["refs"].update(dict.fromkeys(refs, commit))
        return commit

    def requests(self, server: str | None = None, method: str | None = None) -> list[str]:
        """The paths asked for (unquoted), optionally of one server and method only; without the
        agent registry huggingface_hub fetches once a process from the endpoint it saw at import."""
        with self._lock:
            log = [(s, m, unquote(p)) for s, m, p in self.log if p != "/api/agent-harnesses"]
        return [p for s, m, p in log if server in (None, s) and method in (None, m)]

    def __enter__(self) -> FakeHub:
        for role in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            server.daemon_threads = False  # server_close() joins them: nothing outlives the fixture
            server.hub, server.role = self, role
            self._servers.append(server)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.url, self.cdn = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)
        return self

    def __exit__(self, *exc) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join()

    def _commit(self, repo: dict, rev: str) -> str | None:
        commit = repo["refs"].get(rev, rev)
        return commit if commit in repo["commits"] else None

    def answer(self, role: str, path: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for a request of ``path`` (the body of a HEAD is then dropped)."""
        if role == "cdn":
            if m := _CDN.fullmatch(path):
                for repo in self.repos.values():
                    for files in repo["commits"].values():
                        for data in files.values():
                            if hashlib.sha256(data).hexdigest() == m["sha256"]:
                                return 200, {"ETag": f'"{m["sha256"]}"'}, data
            return 404, {}, b"Not Found"
        m = _REVISION.fullmatch(path) or _TREE.fullmatch(path) or _RESOLVE.fullmatch(path)
        if m is None:
            return 404, {}, b"Not Found"
        repo = self.repos.get(unquote(m["repo"]))
        if repo is None:
            return 401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b"{}"
        rev = unquote(m["rev"])
        commit = self._commit(repo, rev)
        if commit is None:
            return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": f"Invalid rev id: {rev}"}, b"{}"
        files = repo["commits"][commit]
        if m.re is _REVISION:
            info = {"id": unquote(m["repo"]), "sha": commit, "private": False}
            info["siblings"] = [{"rfilename": p} for p in sorted(files)]
            return 200, {"Content-Type": "application/json"}, json.dumps(info).encode()
        if m.re is _TREE:
            return 200, {"Content-Type": "application/json"}, json.dumps(self._tree(files, m["path"])).encode()
        name = unquote(m["path"])
        if name not in files:
            headers = {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found", "X-Repo-Commit": commit}
            return 404, headers, b"{}"
        data = files[name]
        if not name.endswith(LFS):
            return 200, {"ETag": f'"{git_blob_id(data)}"', "X-Repo-Commit": commit}, data
        sha = hashlib.sha256(data).hexdigest()
        headers = {
            "Location": f"{self.cdn}/cdn/{sha}?filename={quote(name.rsplit('/', 1)[-1])}",
            "ETag": f'"{git_blob_id(_pointer(data))}"',
            "X-Linked-Etag": f'"{sha}"',
            "X-Linked-Size": str(len(data)),
            "X-Repo-Commit": commit,
        }
        return 302, headers, f"Found. Redirecting to {headers['Location']}".encode()

    @staticmethod
    def _tree(files: dict[str, bytes], under: str | None) -> list[dict]:
        prefix = f"{unquote(under).strip('/')}/" if under else ""
        out, folders = [], set()
        for path, data in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            parts = path.split("/")
            folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
            entry = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}
            if path.endswith(LFS):
                pointer = _pointer(data)
                entry["oid"] = git_blob_id(pointer)
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)}
            out.append(entry)
        dirs = [{"type": "directory", "oid": git_blob_id(f.encode()), "path": f} for f in sorted(folders)]
        return dirs + out


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeHub/1.0"

    def do_HEAD(self) -> None:
        self._reply(body=False)

    def do_GET(self) -> None:
        self._reply(body=True)

    def _reply(self, body: bool) -> None:
        hub: FakeHub = self.server.hub
        path = urlsplit(self.path).path
        with hub._lock:
            hub.log.append((self.server.role, self.command, path))
        status, headers, data = hub.answer(self.server.role, path)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # the log above is enough; keep stderr quiet
        pass
