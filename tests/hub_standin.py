"""A local stand-in for the Hugging Face Hub HTTP API, enough for `create_repo` and `upload_folder`.

Usage:
    with HubStandIn() as hub:                      # threaded server on 127.0.0.1, random port
        HfApi(endpoint=hub.endpoint).create_repo("org/m", private=True)
        hub.repos["org/m"].commits[-1].files       # path -> bytes of that commit
        hub.fail_next(2, status=503, path_contains="/commit/")   # inject answers
        hub.drop_next(1, path_contains="/api/repos/create")      # close without answering
        hub.hang_next(1, seconds=2, path_contains="/commit/")    # answer nothing for 2 s, then close

Endpoints (as called by huggingface_hub 2.4, read from its `hf_api.py`, `_commit_api.py`, `lfs.py`):
    POST /api/repos/create                             {name, organization, visibility, type}
    POST /api/validate-yaml                            README.md metadata check
    POST /api/{type}s/{ns}/{name}/preupload/{rev}      upload mode per file ("regular" | "lfs")
    POST /{ns}/{name}.git/info/lfs/objects/batch       LFS batch API, basic transfer
    PUT  /lfs-upload/{oid}                             the LFS object (sha256 checked)
    POST /api/{type}s/{ns}/{name}/commit/{rev}         NDJSON commit: header, file, lfsFile, deleted*
    GET  /api/{type}s/{ns}/{name}[/revision/{rev}]     repo info
Everything else answers 404 and is recorded in `unhandled`. Weights files (*.safetensors, *.bin)
and files >= 1 MB go through LFS, as on the Hub. A commit is applied atomically or not at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
LFS_MIN_SIZE = 1_000_000


@dataclass
class Commit:
    oid: str
    summary: str
    description: str
    files: dict[str, bytes]  # files added or changed by this commit
    deleted: list[str]


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: list[Commit] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # tree at the head of main


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    status: int = 0


@dataclass
class _Fault:
    remaining: int
    status: int | None  # None = drop the connection
    path_contains: str
    hang_s: float = 0.0  # wait this long before dropping (a client timeout fires first)


class HubStandIn:
    """Threaded local Hub API; see the module docstring."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[Seen] = []
        self.unhandled: list[str] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- control
    @property
    def endpoint(self) -> str:
        assert self._server is not None, "HubStandIn is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStandIn:
        hub = self

        class Handler(_Handler):
            standin = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="hub-standin")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def fail_next(self, n: int, *, status: int = 503, path_contains: str = "") -> None:
        """Answer the next `n` requests whose path contains `path_contains` with `status`."""
        with self._lock:
            self._faults.append(_Fault(n, status, path_contains))

    def drop_next(self, n: int, *, path_contains: str = "") -> None:
        """Close the connection without an answer for the next `n` matching requests."""
        with self._lock:
            self._faults.append(_Fault(n, None, path_contains))

    def hang_next(self, n: int, *, seconds: float, path_contains: str = "") -> None:
        """Read the next `n` matching requests, answer nothing for `seconds`, then close: the
        request is not applied (a Hub that stopped answering)."""
        with self._lock:
            self._faults.append(_Fault(n, None, path_contains, hang_s=seconds))

    def calls(self, path_contains: str = "", method: str | None = None) -> list[Seen]:
        return [
            r for r in self.requests if path_contains in r.path and (method is None or r.method == method)
        ]

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.path_contains in path:
                    fault.remaining -= 1
                    return fault
        return None


class _Handler(BaseHTTPRequestHandler):
    standin: HubStandIn
    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub; every answer sets Content-Length

    def log_message(self, format, *args) -> None:
        pass  # quiet test output

    # ---------------------------------------------------------------- plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload: object = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self._seen.status = status

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        self._send(status, {"error": message}, {"X-Error-Code": code} if code else None)

    def _dispatch(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        hub = self.standin
        self._seen = Seen(method, path, self.headers.get("Authorization"))
        with hub._lock:
            hub.requests.append(self._seen)
        body = self._body()
        fault = hub._take_fault(path)
        if fault is not None:
            if fault.status is None:
                time.sleep(fault.hang_s)
                self.close_connection = True
                return
            return self._error(fault.status, f"injected failure {fault.status}")
        for pattern, handler in _ROUTES:
            match = re.fullmatch(pattern, path)
            if match and handler.__name__.startswith(method.lower()):
                return handler(self, body, **match.groupdict())
        hub.unhandled.append(f"{method} {path}")
        self._error(404, f"stand-in has no route for {method} {path}")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # ---------------------------------------------------------------- endpoints
    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.standin.repos.get(repo_id)
        if repo is None:
            self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def post_create(self, body: bytes) -> None:
        payload = json.loads(body)
        repo_id = "/".join(p for p in (payload.get("organization"), payload["name"]) if p)
        url = f"{self.standin.endpoint}/{repo_id}"
        with self.standin._lock:
            if repo_id in self.standin.repos:
                return self._send(409, {"error": "You already created this model repo", "url": url})
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            self.standin.repos[repo_id] = Repo(repo_id, payload.get("type") or "model", private)
        self._send(200, {"url": url, "name": repo_id, "id": f"id-{len(self.standin.repos)}"})

    def post_validate_yaml(self, body: bytes) -> None:
        content = json.loads(body).get("content", "")
        ok = content.startswith("---\n") and "\n---\n" in content[4:]
        self._send(
            200 if ok else 400, {"errors": [] if ok else [{"message": "no YAML header"}], "warnings": []}
        )

    def post_preupload(self, body: bytes, kind: str, repo_id: str, rev: str) -> None:
        if self._repo(repo_id) is None:
            return
        files = []
        for f in json.loads(body)["files"]:
            lfs = f["size"] > 0 and (f["path"].endswith(LFS_SUFFIXES) or f["size"] >= LFS_MIN_SIZE)
            files.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            )
        self._send(200, {"files": files, "commitOid": None})

    def post_lfs_batch(self, body: bytes, repo_id: str) -> None:
        if self._repo(repo_id) is None:
            return
        objects = []
        for obj in json.loads(body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.standin.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.standin.endpoint}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects})

    def put_lfs_upload(self, body: bytes, oid: str) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            return self._error(400, "sha256 mismatch")
        with self.standin._lock:
            self.standin.lfs_objects[oid] = body
        self._send(200)

    def post_commit(self, body: bytes, kind: str, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        header, added, deleted = {}, {}, []
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                added[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                blob = self.standin.lfs_objects.get(value["oid"])
                if blob is None:  # refuse the whole commit: nothing is applied
                    return self._error(
                        422, f"LFS object {value['oid']} of {value['path']} was never uploaded"
                    )
                added[value["path"]] = blob
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
        with self.standin._lock:
            parent = repo.commits[-1].oid if repo.commits else ""
            oid = hashlib.sha1(f"{repo_id}{parent}{len(repo.commits)}".encode() + body).hexdigest()
            for path in deleted:
                repo.files = {
                    p: b for p, b in repo.files.items() if p != path and not p.startswith(path + "/")
                }
            repo.files.update(added)
            repo.commits.append(
                Commit(oid, header.get("summary", ""), header.get("description", ""), added, deleted)
            )
        url = f"{self.standin.endpoint}/{repo_id}/commit/{oid}"
        self._send(200, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None})

    def get_repo_info(self, body: bytes, kind: str, repo_id: str, rev: str | None = None) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        sha = repo.commits[-1].oid if repo.commits else "0" * 40
        siblings = [{"rfilename": p} for p in sorted(repo.files)]
        self._send(
            200,
            {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private, "siblings": siblings},
        )


_REPO = r"(?P<repo_id>[^/]+/[^/]+?)"
_ROUTES = [
    (r"/api/repos/create", _Handler.post_create),
    (r"/api/validate-yaml", _Handler.post_validate_yaml),
    (rf"/api/(?P<kind>models|datasets|spaces)/{_REPO}/preupload/(?P<rev>.+)", _Handler.post_preupload),
    (rf"/(?:datasets/|spaces/)?{_REPO}\.git/info/lfs/objects/batch", _Handler.post_lfs_batch),
    (r"/lfs-upload/(?P<oid>[0-9a-f]{64})", _Handler.put_lfs_upload),
    (rf"/api/(?P<kind>models|datasets|spaces)/{_REPO}/commit/(?P<rev>.+)", _Handler.post_commit),
    (rf"/api/(?P<kind>models|datasets|spaces)/{_REPO}(?:/revision/(?P<rev>.+))?", _Handler.get_repo_info),
]
