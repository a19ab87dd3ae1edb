"""A small Hugging Face Hub-compatible HTTP server for offline tests (loopback only, state in memory).

It implements exactly the endpoints that the installed `huggingface_hub` (2.x, with `HF_HUB_DISABLE_XET`) and
`transformers` call to create a repo, create / list branches, upload a folder (preupload, the LFS basic transfer
and the NDJSON commit API), read repo info and trees, list commits, validate a card's YAML and download files
(`resolve`, `HEAD` included). Model, dataset and Space repos share one implementation.

Use it as a context manager or with `start()` / `stop()`::

    with HubServer() as hub:
        HfApi(endpoint=hub.url).create_repo("user/x")

Test hooks:

* `fail(method, path_regex, times=1, status=500, drop=False)` makes the next `times` matching requests answer
  `status` (or, with `drop=True`, close the connection without an answer); `times=None` fails for ever.
* `requests` is the log of every request (method, path, headers with lower-case names, body);
  `file_contents(repo_id, revision)` gives a revision's files as bytes.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)
DEFAULT_LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt", "*.parquet", "*.arrow")
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def blob_id(self) -> str:  # the git object id: of the pointer file for an LFS file
        return git_blob_sha1(lfs_pointer(self.sha256, len(self.content)) if self.lfs else self.content)

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.blob_id, "size": len(self.content), "path": path}
        if self.lfs:
            pointer = lfs_pointer(self.sha256, len(self.content))
            entry["lfs"] = {"oid": self.sha256, "size": len(self.content), "pointerSize": len(pointer)}
        return entry


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, StoredFile]
    title: str
    message: str
    date: str


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        return self.commits.get(revision)


@dataclass
class FailRule:
    method: str
    pattern: re.Pattern
    times: int | None
    status: int
    drop: bool
    hits: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format, *args):  # quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self):
        body = self._read_body()
        self.server.hub._handle(self, body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    hub: "HubServer"


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class HubServer:
    """An in-memory Hub on 127.0.0.1 (an ephemeral port)."""

    def __init__(self, *, user: str = "testuser", lfs_threshold: int = 10 * 1024 * 1024,
                 lfs_patterns=DEFAULT_LFS_PATTERNS):
        self.user = user
        self.lfs_threshold = lfs_threshold
        self.lfs_patterns = tuple(lfs_patterns)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.fail_rules: list[FailRule] = []
        self._lock = threading.RLock()
        self._counter = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> "HubServer":
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------------------------------------ test hooks
    def fail(self, method: str, path_regex: str, *, times: int | None = 1, status: int = 500, drop: bool = False):
        rule = FailRule(method.upper(), re.compile(path_regex), times, status, drop)
        with self._lock:
            self.fail_rules.append(rule)
        return rule

    def clear_failures(self) -> None:
        with self._lock:
            self.fail_rules.clear()

    def get_repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def file_contents(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        commit = self.get_repo(repo_id, repo_type).resolve(revision)
        return {path: f.content for path, f in commit.files.items()}

    def all_uploaded_bytes(self) -> list[tuple[str, bytes]]:
        """(repo/path@commit, content) of every file of every commit of every repo, and every LFS object."""
        out = []
        for (_, repo_id), repo in self.repos.items():
            for commit in repo.commits.values():
                out += [(f"{repo_id}/{p}@{commit.oid[:8]}", f.content) for p, f in commit.files.items()]
        out += [(f"lfs:{oid}", data) for oid, data in self.lfs_store.items()]
        return out

    # ------------------------------------------------------------------------------------------------ helpers
    def _new_commit(self, repo: Repo, parent: str | None, files: dict[str, StoredFile], title: str, message=""):
        self._counter += 1
        digest = hashlib.sha1()
        digest.update(f"{repo.repo_type}/{repo.repo_id}:{parent}:{self._counter}:{title}".encode())
        for path in sorted(files):
            digest.update(f"{path}:{files[path].blob_id}".encode())
        oid = digest.hexdigest()
        date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        repo.commits[oid] = Commit(oid, parent, dict(files), title, message, date)
        return oid

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository Not Found for url: {repo_type}/{repo_id}.", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _upload_mode(self, path: str, size: int) -> str:
        if size >= self.lfs_threshold or any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], p) for p in self.lfs_patterns):
            return "lfs"
        return "regular"

    # ------------------------------------------------------------------------------------------------ dispatch
    def _handle(self, h: _Handler, body: bytes) -> None:
        parts = urlsplit(h.path)
        path, query = parts.path, parse_qs(parts.query)
        with self._lock:
            headers = {k.lower(): v for k, v in h.headers.items()}
            self.requests.append({"method": h.command, "path": h.path, "headers": headers, "body": body})
            for rule in self.fail_rules:
                if rule.method in (h.command, "*") and rule.pattern.search(path) and rule.times != 0:
                    rule.hits += 1
                    if rule.times is not None:
                        rule.times -= 1
                    if rule.drop:
                        h.close_connection = True
                        try:
                            h.connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        return
                    return self._send_json(h, {"error": f"injected failure {rule.status}"}, rule.status)
            try:
                status, payload, headers = self._route(h, path, query, body)
            except Exception as err:  # noqa: BLE001 - a server bug answers 500 rather than hanging up
                if not isinstance(err, HubError):
                    err = HubError(500, f"test server error: {type(err).__name__}: {err}")
                headers = {"X-Error-Message": err.message}
                if err.code:
                    headers["X-Error-Code"] = err.code
                return self._send_json(h, {"error": err.message}, err.status, headers)
        if isinstance(payload, bytes):
            self._send(h, status, payload, headers)
        else:
            self._send_json(h, payload, status, headers)

    def _send_json(self, h, payload, status=200, headers=None):
        data = json.dumps(payload).encode()
        self._send(h, status, data, {"Content-Type": "application/json", **(headers or {})})

    def _send(self, h, status, data: bytes, headers=None):
        h.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/octet-stream")
        headers.setdefault("Content-Length", str(len(data)))
        for key, value in headers.items():
            h.send_header(key, value)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def _route(self, h, path: str, query: dict, body: bytes):
        method = h.command
        segs = path.split("/")[1:]
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if path == "/api/whoami-v2" and method == "GET":
            return 200, {"type": "user", "name": self.user, "orgs": [], "auth": {}}, {}
        if segs[:2] == ["__lfs", "upload"] and method == "PUT":
            oid = segs[2]
            if hashlib.sha256(body).hexdigest() != oid:
                raise HubError(400, "sha256 mismatch")
            self.lfs_store[oid] = body
            return 200, b"", {}
        if path == "/__lfs/verify" and method == "POST":
            info = json.loads(body)
            if info["oid"] not in self.lfs_store or len(self.lfs_store[info["oid"]]) != info["size"]:
                raise HubError(404, "LFS object not found")
            return 200, {"success": True}, {}
        if len(segs) >= 5 and segs[0] == "api" and segs[1] in REPO_TYPES:
            repo_type, repo_id, rest = REPO_TYPES[segs[1]], f"{unquote(segs[2])}/{unquote(segs[3])}", segs[4:]
            return self._api(method, repo_type, repo_id, rest, query, body)
        # git LFS batch: /{prefix}{ns}/{name}.git/info/lfs/objects/batch
        m = re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+)/([^/]+)\.git/info/lfs/objects/batch", path)
        if m and method == "POST":
            repo_type = {"datasets": "dataset", "spaces": "space"}.get(m.group(1) or "", "model")
            return self._lfs_batch(h, repo_type, f"{m.group(2)}/{m.group(3)}", json.loads(body))
        # downloads: /{prefix}{ns}/{name}/resolve/{rev}/{path}
        m = re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)", path)
        if m and method in ("GET", "HEAD"):
            repo_type = {"datasets": "dataset", "spaces": "space"}.get(m.group(1) or "", "model")
            repo_id = f"{unquote(m.group(2))}/{unquote(m.group(3))}"
            return self._resolve(h, repo_type, repo_id, unquote(m.group(4)), unquote(m.group(5)))
        raise HubError(404, f"no route for {method} {path}")

    # ------------------------------------------------------------------------------------------------ endpoints
    def _create_repo(self, payload: dict):
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        key = (repo_type, repo_id)
        url = f"{self.url}/{URL_PREFIX[repo_type]}{repo_id}"
        if key in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}, {}
        repo = Repo(repo_id, repo_type, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        oid = self._new_commit(repo, None, {".gitattributes": StoredFile(DEFAULT_GITATTRIBUTES, False)},
                               "initial commit")
        repo.branches["main"] = oid
        self.repos[key] = repo
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    def _validate_yaml(self, payload: dict):
        import yaml

        content = payload.get("content", "")
        m = re.match(r"^\s*---\s*\n(.*?)\n---\s*\n", content, re.S)
        errors = []
        if m:
            try:
                meta = yaml.safe_load(m.group(1)) or {}
                if not isinstance(meta, dict):
                    errors.append("metadata must be a mapping")
                elif "model-index" in meta:
                    for entry in meta["model-index"]:
                        if "name" not in entry or not isinstance(entry.get("results"), list):
                            errors.append('"model-index" entries need "name" and "results"')
            except yaml.YAMLError as err:
                errors.append(f"invalid YAML: {err}")
        if errors:
            return 400, {"errors": [{"message": e} for e in errors], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _api(self, method, repo_type, repo_id, rest, query, body):
        repo = self._repo(repo_type, repo_id)
        what = rest[0] if rest else ""
        if method == "GET" and what in ("", "revision"):
            revision = unquote(rest[1]) if what == "revision" else "main"
            return self._info(repo, self._commit(repo, revision))
        if method == "GET" and what == "refs":
            def ref(name, oid):
                return {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}

            branches = [ref(n, o) for n, o in repo.branches.items()]
            return 200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []}, {}
        if what == "branch":
            branch = unquote(rest[1])
            if method == "POST":
                payload = json.loads(body or b"{}")
                if branch in repo.branches:
                    raise HubError(409, f"Reference already exists: refs/heads/{branch}")
                if branch.startswith("refs/") or not re.fullmatch(r"[A-Za-z0-9._/-]+", branch):
                    raise HubError(400, f"Invalid reference for a branch: {branch}")
                start = self._commit(repo, payload.get("startingPoint") or "main")
                repo.branches[branch] = start.oid
                return 200, {}, {}
            if method == "DELETE":
                if branch not in repo.branches or branch == "main":
                    raise HubError(404 if branch != "main" else 403, f"cannot delete branch {branch}")
                del repo.branches[branch]
                return 200, {}, {}
        if method == "GET" and what == "tree":
            commit = self._commit(repo, unquote(rest[1]))
            prefix = unquote("/".join(rest[2:])).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return 200, self._tree(commit, prefix, recursive), {}
        if method == "GET" and what == "commits":
            commit = self._commit(repo, unquote(rest[1]))
            history = []
            while commit is not None:
                history.append({"id": commit.oid, "title": commit.title, "message": commit.message,
                                "authors": [{"user": self.user}], "date": commit.date})
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return 200, history, {}
        if method == "POST" and what == "preupload":
            commit = self._commit(repo, unquote(rest[1]))
            files = []
            for item in json.loads(body)["files"]:
                mode = self._upload_mode(item["path"], item["size"])
                existing = commit.files.get(item["path"])
                oid = None
                if existing is not None:
                    oid = existing.sha256 if existing.lfs else git_blob_sha1(existing.content)
                files.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
            return 200, {"files": files, "commitOid": commit.oid}, {}
        if method == "POST" and what == "commit":
            return self._commit_ndjson(repo, unquote(rest[1]), body)
        raise HubError(404, f"no route for {method} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}")

    def _info(self, repo: Repo, commit: Commit):
        siblings = [{"rfilename": p} for p in sorted(commit.files)]
        info = {"id": repo.repo_id, "_id": repo.repo_id, "sha": commit.oid, "private": repo.private,
                "author": repo.repo_id.split("/")[0], "lastModified": commit.date, "siblings": siblings,
                "tags": [], "disabled": False, "gated": False, "downloads": 0, "likes": 0}
        return 200, info, {}

    @staticmethod
    def _tree(commit: Commit, prefix: str, recursive: bool) -> list[dict]:
        base = f"{prefix}/" if prefix else ""
        if prefix and not any(p.startswith(base) for p in commit.files):
            raise HubError(404, f"{prefix} does not exist on this revision", "EntryNotFound")
        entries, folders = [], set()
        for path in sorted(commit.files):
            if not path.startswith(base):
                continue
            rel = path[len(base):]
            if "/" in rel:
                parts = rel.split("/")
                depth = len(parts) - 1 if recursive else 1
                for i in range(1, depth + 1):
                    folders.add(base + "/".join(parts[:i]))
                if not recursive:
                    continue
            entries.append(commit.files[path].tree_entry(path))
        dirs = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                for d in sorted(folders)]
        return dirs + entries

    def _commit_ndjson(self, repo: Repo, revision: str, body: bytes):
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        head = repo.commits[repo.branches[revision]]
        files = dict(head.files)
        header = {}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "only base64 content is supported")
                content = base64.b64decode(value["content"])
                files[value["path"]] = StoredFile(content, False)
            elif key == "lfsFile":
                data = self.lfs_store.get(value["oid"])
                if data is None:
                    raise HubError(422, f"LFS object {value['oid']} was not uploaded")
                files[value["path"]] = StoredFile(data, True)
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for p in [p for p in files if p.startswith(prefix)]:
                    del files[p]
            else:
                raise HubError(400, f"unsupported commit operation {key!r}")
        parent = header.get("parentCommit")
        if parent is not None and parent != head.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        oid = self._new_commit(repo, head.oid, files, header.get("summary", ""), header.get("description", ""))
        repo.branches[revision] = oid
        url = f"{self.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{oid}"
        return 200, {"success": True, "commitOid": oid, "commitUrl": url, "pullRequestUrl": None}, {}

    def _lfs_batch(self, h, repo_type, repo_id, payload):
        self._repo(repo_type, repo_id)
        objects = []
        for obj in payload.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs_store:
                entry["authenticated"] = True
                entry["actions"] = {"upload": {"href": f"{self.url}/__lfs/upload/{obj['oid']}"},
                                    "verify": {"href": f"{self.url}/__lfs/verify"}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def _resolve(self, h, repo_type, repo_id, revision, path):
        repo = self._repo(repo_type, repo_id)
        commit = self._commit(repo, revision)
        stored = commit.files.get(path)
        if stored is None:
            err = HubError(404, "Entry not found", "EntryNotFound")
            raise err
        data = stored.content
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if stored.lfs:
            headers["ETag"] = f'"{stored.sha256}"'
            headers["X-Linked-Etag"] = f'"{stored.sha256}"'
            headers["X-Linked-Size"] = str(len(data))
        else:
            headers["ETag"] = f'"{stored.blob_id}"'
        status = 200
        rng = h.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m and h.command == "GET":
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        return status, data, headers
