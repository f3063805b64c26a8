"""A local stand-in for the Hugging Face Hub, on 127.0.0.1, that answers ``hf_hub_download`` the way the Hub
answers it for a weights file (an LFS file), so the real download code runs with no internet:

- ``HEAD {endpoint}/{repo_id}/resolve/{revision}/{filename}``: ``302`` to the file's blob on a separate "CDN"
  server (another port, so another origin: like the Hub's CDN, huggingface_hub takes the metadata from the
  redirect itself and does not follow it), with ``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256) and
  ``X-Linked-Size``. A missing file is ``404`` + ``X-Error-Code: EntryNotFound``, a missing repository ``401`` +
  ``X-Error-Code: RepoNotFound``, as the Hub does.
- ``GET {cdn}/blobs/{sha256}``: the bytes, ``206`` with ``Content-Range`` for a ``Range: bytes=N-`` request.
  :meth:`FakeHub.cut_downloads` makes the next GETs of a file send its full ``Content-Length`` but close the
  connection after some bytes (a dropped connection); :meth:`FakeHub.corrupt_next_download` sends other bytes
  of the same length once (corruption in transit, which the size check cannot see).
- The commit of a repository (``X-Repo-Commit``) changes with its files, as a commit on the Hub does.

No ``X-Xet-*`` header is ever sent, so huggingface_hub uses plain HTTP (never xet). Every request is logged
(:attr:`FakeHub.requests`), on both servers, so tests can check what the client really asked for.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


@dataclass(frozen=True)
class Request:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[Request] = []
        self._cuts: dict[str, list[int]] = {}  # sha256 -> bytes sent before the connection drops, per GET
        self._corrupt: dict[str, bytes] = {}  # sha256 -> the body the next GET sends instead
        self._lock = threading.Lock()
        self._hub = self._serve("hub")
        self._cdn = self._serve("cdn")
        self.running = True

    # --- content ------------------------------------------------------------------------------------

    def add(self, repo_id: str, filename: str, data: bytes) -> None:
        self.repos.setdefault(repo_id, {})[filename] = data

    def add_repo(self, repo_id: str) -> None:
        self.repos.setdefault(repo_id, {})

    def sha256(self, repo_id: str, filename: str) -> str:
        return hashlib.sha256(self.repos[repo_id][filename]).hexdigest()

    def cut_downloads(self, repo_id: str, filename: str, after: int, times: int = 1) -> None:
        """The next ``times`` GETs of this file send ``after`` bytes of their body, then drop the connection."""
        self._cuts[self.sha256(repo_id, filename)] = [after] * times

    def corrupt_next_download(self, repo_id: str, filename: str, body: bytes) -> None:
        assert len(body) == len(self.repos[repo_id][filename]), (
            "same length, or the client's size check sees it"
        )
        self._corrupt[self.sha256(repo_id, filename)] = body

    def commit(self, repo_id: str) -> str:
        files = sorted((name, hashlib.sha256(data).hexdigest()) for name, data in self.repos[repo_id].items())
        return hashlib.sha1(repr((repo_id, files)).encode()).hexdigest()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def calls(self, method: str | None = None, server: str | None = None) -> list[Request]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and (server is None or r.server == server)
            ]

    def stop(self) -> None:
        if self.running:
            for server in (self._hub, self._cdn):
                server.shutdown()
                server.server_close()
            self.running = False

    # --- serving -------------------------------------------------------------------------------------

    def _blob(self, sha: str) -> bytes | None:
        for files in self.repos.values():
            for data in files.values():
                if hashlib.sha256(data).hexdigest() == sha:
                    return data
        return None

    def _serve(self, name: str) -> ThreadingHTTPServer:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: the log is FakeHub.requests
                pass

            def _record(self) -> None:
                with hub._lock:
                    hub.requests.append(Request(name, self.command, unquote(self.path), dict(self.headers)))

            def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self._record()
                self._resolve() if name == "hub" else self._blob_reply()

            def do_GET(self) -> None:
                self._record()
                self._resolve() if name == "hub" else self._blob_reply()

            def _resolve(self) -> None:
                parts = unquote(self.path.split("?")[0]).lstrip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    self._reply(404, {"X-Error-Code": "EntryNotFound"}, b"not a resolve url")
                    return
                repo_id, filename = "/".join(parts[:2]), "/".join(parts[4:])
                if repo_id not in hub.repos:
                    self._reply(401, {"X-Error-Code": "RepoNotFound"}, b"Repository not found")
                    return
                commit = hub.commit(repo_id)
                data = hub.repos[repo_id].get(filename)
                if data is None:
                    headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}
                    self._reply(404, headers, b"Entry not found")
                    return
                sha = hashlib.sha256(data).hexdigest()
                self._reply(
                    302,
                    {
                        "Location": f"{hub.cdn}/blobs/{sha}",
                        "X-Repo-Commit": commit,
                        "ETag": f'"{hashlib.sha1(sha.encode()).hexdigest()}"',  # the LFS pointer's git id
                        "X-Linked-Etag": f'"{sha}"',
                        "X-Linked-Size": str(len(data)),
                    },
                )

            def _blob_reply(self) -> None:
                sha = self.path.split("?")[0].rsplit("/", 1)[-1]
                data = hub._blob(sha)
                if not self.path.startswith("/blobs/") or data is None:
                    self._reply(404, {}, b"no such blob")
                    return
                start, status, headers = 0, 200, {"Accept-Ranges": "bytes", "ETag": f'"{sha}"'}
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start, status = int(rng[len("bytes=") : -1]), 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = hub._corrupt.pop(sha, data)[start:] if self.command == "GET" else data[start:]
                cuts = hub._cuts.get(sha) if self.command == "GET" else None
                cut = cuts.pop(0) if cuts else None
                if cut is None:
                    self._reply(status, headers, body)
                    return
                headers["Content-Length"] = str(len(body))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True  # the rest never comes: the client sees a short body

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return server
