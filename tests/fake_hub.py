"""A stand-in for the Hugging Face Hub on 127.0.0.1, for the push tests (the suite cannot reach the Hub):
it answers the calls huggingface_hub makes to check a token, create a repository and commit files, and
records each request, so a test reads what would have been uploaded. Every file is answered as a regular
(inline, base64) upload, so no LFS or Xet storage is involved; the real upload was not run here."""
import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self, user="tester", orgs=("team",), role="write", fail=None):
        self.user, self.orgs, self.role = user, list(orgs), role
        # a path fragment answered with 403 (a Hub refusing mid-push, as for a full storage quota; a 5xx would
        # be retried by huggingface_hub for 20 s first)
        self.fail = fail
        self.requests = []  # (method, path, headers (lower-case names), body)
        self.repos = {}  # repo id -> {"private": bool, "files": {path: bytes}}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self.send_response(200)
                self.end_headers()

            def do_GET(self):
                hub.answer(self, "GET")

            def do_POST(self):
                hub.answer(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def answer(self, handler, method):
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        path = handler.path.split("?")[0]
        self.requests.append((method, path, {k.lower(): v for k, v in handler.headers.items()}, body))
        status, payload = self.route(method, path, handler.headers, body)
        data = json.dumps(payload).encode()
        handler.send_response(status)
        if payload.get("error") == "Repository not found":  # how huggingface_hub tells a missing repository
            handler.send_header("X-Error-Code", "RepoNotFound")
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def route(self, method, path, headers, body):
        if self.fail and self.fail in path:
            return 403, {"error": "Storage quota exceeded"}
        if headers.get("Authorization") != "Bearer hf_test_token":
            return 401, {"error": "Invalid credentials in Authorization header"}
        parts = path.strip("/").split("/")
        if path == "/api/whoami-v2":
            return 200, {"type": "user", "name": self.user, "orgs": [{"name": org} for org in self.orgs],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": self.role}}}
        if path == "/api/validate-yaml":  # the Hub checks a card's metadata before a commit that holds it
            return self.validate(json.loads(body)["content"])
        if path == "/api/repos/create" and method == "POST":
            request = json.loads(body)
            repo = f"{request.get('organization') or self.user}/{request['name']}"
            if repo in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo}"}
            self.repos[repo] = {"private": request.get("visibility") == "private" or bool(request.get("private")), "files": {}}
            return 200, {"url": f"{self.url}/{repo}", "name": repo, "id": repo}
        if parts[:2] == ["api", "models"] and "preupload" in parts:
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if parts[:2] == ["api", "models"] and "commit" in parts:
            repo = "/".join(parts[2:parts.index("commit")])
            for line in body.decode().splitlines():
                entry = json.loads(line)
                if entry.get("key") == "file":
                    self.repos.setdefault(repo, {"private": False, "files": {}})["files"][entry["value"]["path"]] = (
                        base64.b64decode(entry["value"]["content"]))
            return 200, {"commitUrl": f"{self.url}/{repo}/commit/{'1' * 40}", "commitOid": "1" * 40}
        if parts[:2] == ["api", "models"] and len(parts) >= 4:  # repo info, at a revision or not
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                return 404, {"error": "Repository not found"}
            return 200, {"id": repo, "sha": "0" * 40, "private": self.repos[repo]["private"],
                         "siblings": [{"rfilename": name} for name in self.repos[repo]["files"]]}
        return 404, {"error": f"the fake hub does not answer {method} {path}"}

    @staticmethod
    def validate(content):
        """What the Hub refuses in a card's metadata, as far as huggingface_hub can tell: YAML that does not
        parse, a model-index it cannot read, a base_model that is not a repository id (a local path)."""
        from huggingface_hub import ModelCard
        from huggingface_hub.utils import validate_repo_id
        try:
            data = ModelCard(content, ignore_metadata_errors=False).data
            if data.base_model:
                validate_repo_id(data.base_model)
        except Exception as error:
            return 400, {"errors": [{"message": str(error)}]}
        return 200, {"errors": [], "warnings": []}
