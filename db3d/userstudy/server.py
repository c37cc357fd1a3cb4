"""The rater web app (Flask) and `serve` (waitress, a production WSGI server).

Routes
- `GET /r/<token>`                   the rater page (one question at a time, keyboard ←/→ or 1/2)
- `GET /api/r/<token>/next`          {answered, total, done, trial}: the rater's next unanswered trial
- `POST /api/r/<token>/answer`       JSON {trial_id, choice: left|right, ms?}: one answer, idempotent;
                                     answers with the new state (and the next trial). The trial_id a
                                     browser sees and sends is the opaque `public_id` (the real id
                                     names the baseline)
- `GET /media/<hash>.gif|png`        study media (content-hash names: blind to the variant)
- `GET /admin/export[?format=tsv]`   every response + rater progress      } admin token: header
- `GET /admin/status`                rater progress                        } X-Admin-Token, or
- `POST /admin/raters` {count}       new raters -> their tokens and links  } Bearer, or ?token=
- `GET /healthz`

A rater only ever reaches their own session: the token picks the rater, the trial must be one of
that rater's schedule (404 otherwise), the body names nothing else (unknown keys: 400). Nothing a
rater can reach shows another rater's answers or any result. Malformed JSON (nested past the
parser's depth included): 400, not JSON: 415, bodies over `max_content_length`: 413 - all as JSON,
never a crash. No log line holds a token: the path of a rater route is logged as `/r/<token>`, and
an unexpected error's traceback has the request's tokens replaced.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import csv
import io
import json
import logging
import re
import threading
import traceback
from pathlib import Path

from ..errors import Db3dError
from . import design
from .store import RESPONSE_COLUMNS, Store

log = logging.getLogger(__name__)

MAX_CONTENT_LENGTH = 16 * 1024  # an answer is < 300 bytes; Flask answers 413 (JSON) above this
WAITRESS_MAX_BODY = 1024 * 1024  # waitress drops bodies above this before they reach Flask
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
MEDIA_RE = re.compile(r"[0-9a-f]{20}\.(gif|png)")
ANSWER_KEYS = {"trial_id", "choice", "ms"}
MAX_NEW_RATERS = 1000
RATER_PATH_RE = re.compile(r"(/r/)[^/?#]*")
CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def manifest_sha256(study_dir: Path) -> str:
    return hashlib.sha256((Path(study_dir) / design.MANIFEST).read_bytes()).hexdigest()


def loggable_path(path: str) -> str:
    """`path` with a rater token replaced (`/api/r/<token>/answer`): a token is a rater's password."""
    return RATER_PATH_RE.sub(r"\1<token>", path)


def json_body(request) -> object:
    """The request's JSON body, or None when it does not parse (bad syntax, bad UTF-8, or nested
    deeper than the parser recurses: Python's json raises RecursionError, not ValueError)."""
    try:
        return json.loads(request.get_data(cache=True))
    except (ValueError, RecursionError):
        return None


def open_store(study_dir: str | Path, db_path: str | Path | None = None) -> Store:
    """The study's store, with the raters of raters.tsv registered and the manifest pinned.

    A store whose answers were collected under another manifest is refused (the trial ids and
    sides would not mean the same thing).
    """
    study_dir = Path(study_dir)
    store = Store(db_path or study_dir / design.DB_NAME)
    digest = manifest_sha256(study_dir)
    pinned = store.get_meta("manifest_sha256")
    if pinned is None:
        store.set_meta("format", design.FORMAT)
        store.set_meta("manifest_sha256", digest)
    elif pinned != digest:
        store.close()
        raise Db3dError(f"{store.path} holds answers collected under another manifest.json "
                        f"(sha256 {pinned[:12]}, now {digest[:12]}); keep the study folder as built, "
                        "or start a new one")
    for rid, tok in design.read_raters(study_dir):
        store.add_rater(rid, design.rater_index(rid), design.token_hash(tok), source="build")
    return store


def create_app(study_dir: str | Path, db_path: str | Path | None = None, admin_token: str | None = None,
               max_content_length: int = MAX_CONTENT_LENGTH):
    """The Flask app of one study folder. `admin_token` defaults to `<study>/admin_token`."""
    from flask import Flask, abort, jsonify, render_template, request, send_from_directory
    from werkzeug.exceptions import HTTPException

    study_dir = Path(study_dir).resolve()
    manifest = design.load_manifest(study_dir)
    store = open_store(study_dir, db_path)
    admin_token = admin_token or design.read_admin_token(study_dir)
    media_dir = study_dir / "media"
    new_rater_lock = threading.Lock()

    app = Flask(__name__, template_folder="templates", static_folder="static", static_url_path="/static")
    app.config.update(MAX_CONTENT_LENGTH=int(max_content_length))
    app.extensions["db3d_store"] = store
    app.extensions["db3d_manifest"] = manifest

    @functools.lru_cache(maxsize=4096)
    def schedule(index: int) -> tuple[list[dict], dict[str, dict]]:
        trials = design.rater_schedule(manifest, index)
        return trials, {t["public_id"]: t for t in trials}

    def api_path() -> bool:
        return request.path.startswith(("/api/", "/admin/"))

    def rater_or_404(token: str):
        if not TOKEN_RE.fullmatch(token or ""):
            abort(404, description="unknown rater link")
        row = store.rater_by_token_hash(design.token_hash(token))
        if row is None:
            abort(404, description="unknown rater link")
        return row

    def state(rater) -> dict:
        trials, _ = schedule(int(rater["rater_index"]))
        done = store.answered(rater["rater_id"])
        nxt = next((t for t in trials if t["trial_id"] not in done), None)
        return {"answered": sum(t["trial_id"] in done for t in trials), "total": len(trials),
                "done": nxt is None, "trial": design.public_trial(manifest, nxt) if nxt else None}

    def require_admin() -> None:
        if not admin_token:
            abort(403, description="admin endpoints are disabled: this study has no admin token")
        given = request.headers.get("X-Admin-Token", "")
        auth = request.headers.get("Authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            given = request.args.get("token", "")
        if not given:
            abort(401, description="admin token required (X-Admin-Token header, Bearer, or ?token=)")
        if not hmac.compare_digest(given.encode(), admin_token.encode()):
            abort(403, description="wrong admin token")

    # ---- errors and headers
    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        if api_path():
            return jsonify(error=e.description or e.name, code=e.code), e.code
        return render_template("message.html", title=f"{e.code} {e.name}", message=e.description or e.name), e.code

    @app.errorhandler(Exception)
    def server_error(e: Exception):  # a bug: logged with its traceback, answered as a 500, server stays up
        tb = traceback.format_exc()
        for secret in (*(request.view_args or {}).values(), request.args.get("token"), admin_token,
                       request.headers.get("X-Admin-Token"), request.headers.get("Authorization")):
            if isinstance(secret, str) and secret:
                tb = tb.replace(secret, "<redacted>")
        log.error("userstudy: unhandled error on %s %s\n%s", request.method, loggable_path(request.path), tb)
        if api_path():
            return jsonify(error="internal error", code=500), 500
        return render_template("message.html", title="500 Internal Server Error",
                               message="Something went wrong; please reload the page."), 500

    @app.after_request
    def headers(resp):
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Content-Security-Policy"] = CSP
        if not request.path.startswith(("/media/", "/static/")):
            resp.headers["Cache-Control"] = "no-store"
        return resp

    # ---- rater
    @app.get("/")
    def index():
        return render_template("message.html", title=manifest["name"],
                               message="This is a user study. Please open the personal link you were given.")

    @app.get("/favicon.ico")
    def favicon():
        return "", 204

    @app.get("/healthz")
    def healthz():
        return jsonify(ok=True)

    @app.get("/r/<token>")
    def rater_page(token: str):
        rater_or_404(token)
        return render_template("rater.html", token=token, title=manifest["name"])

    @app.get("/api/r/<token>/next")
    def api_next(token: str):
        return jsonify(state(rater_or_404(token)))

    @app.post("/api/r/<token>/answer")
    def api_answer(token: str):
        rater = rater_or_404(token)
        if not request.is_json:
            abort(415, description="send the answer as application/json")
        data = json_body(request)
        if not isinstance(data, dict):
            abort(400, description="the body must be a JSON object {trial_id, choice, ms}")
        extra = set(data) - ANSWER_KEYS
        if extra:
            abort(400, description=f"unknown field(s): {', '.join(sorted(map(str, extra)))[:200]}")
        trial_id, choice, ms = data.get("trial_id"), data.get("choice"), data.get("ms")
        if not isinstance(trial_id, str) or not 0 < len(trial_id) <= 200:
            abort(400, description="trial_id must be a non-empty string")
        if choice not in ("left", "right"):
            abort(400, description="choice must be 'left' or 'right'")
        if ms is not None and (isinstance(ms, bool) or not isinstance(ms, (int, float))
                               or not 0 <= ms <= 86_400_000 or ms != ms):
            abort(400, description="ms must be a number of milliseconds (0 to 1 day)")
        _, by_id = schedule(int(rater["rater_index"]))
        trial = by_id.get(trial_id)
        if trial is None:
            abort(404, description="no such trial in this rater's session")
        status, row = store.record_answer(rater["rater_id"], trial, choice, None if ms is None else int(ms))
        body = {"status": status, "answered_trial": trial_id, "choice": row["choice"], **state(rater)}
        return jsonify(body), (409 if status == "conflict" else 200)

    @app.get("/media/<name>")
    def media(name: str):
        if not MEDIA_RE.fullmatch(name):
            abort(404)
        return send_from_directory(media_dir, name, max_age=86400)

    # ---- admin
    @app.get("/admin/status")
    def admin_status():
        require_admin()
        return jsonify(study=manifest["name"], manifest_sha256=manifest_sha256(study_dir),
                       trials_per_rater=manifest["design"]["trials_per_rater"], raters=store.progress())

    @app.get("/admin/export")
    def admin_export():
        require_admin()
        rows = store.responses()
        fmt = request.args.get("format", "json")
        if fmt == "tsv":
            buf = io.StringIO()
            w = csv.DictWriter(buf, RESPONSE_COLUMNS, delimiter="\t", lineterminator="\n")
            w.writeheader()
            w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
            return app.response_class(buf.getvalue(), mimetype="text/tab-separated-values",
                                      headers={"Content-Disposition": "attachment; filename=responses.tsv"})
        if fmt != "json":
            abort(400, description="format must be json or tsv")
        return jsonify(study=manifest["name"], manifest_sha256=manifest_sha256(study_dir),
                       raters=store.progress(), responses=rows)

    @app.post("/admin/raters")
    def admin_raters():
        require_admin()
        data = json_body(request) if request.content_length else {}
        if data is None or not isinstance(data, dict) or set(data) - {"count"}:
            abort(400, description="body: JSON object {count}")
        count = data.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_NEW_RATERS:
            abort(400, description=f"count must be an integer from 1 to {MAX_NEW_RATERS}")
        created = []
        with new_rater_lock:
            for _ in range(count):
                idx = store.new_rater_index()
                tok = design.new_token()
                store.add_rater(design.rater_id(idx), idx, design.token_hash(tok), source="admin")
                created.append({"rater_id": design.rater_id(idx), "token": tok, "link": f"/r/{tok}"})
        return jsonify(raters=created), 201

    return app


def serve(study_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, threads: int = 8,
          db_path: str | Path | None = None) -> None:
    """Serve the study with waitress until interrupted."""
    try:
        from waitress import create_server
    except ImportError as e:
        raise Db3dError(f"waitress is needed to serve the study ({e}); install envs/requirements-cpu.txt") from None
    app = create_app(study_dir, db_path)
    try:
        server = create_server(app, host=host, port=int(port), threads=int(threads), ident="db3d-userstudy",
                               max_request_body_size=WAITRESS_MAX_BODY)
    except OSError as e:
        raise Db3dError(f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port") from None
    n = len(design.read_raters(study_dir))
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("userstudy: listening on %s: put it behind HTTPS before sending links to raters", host)
    print(f"db3d userstudy: serving {study_dir} on http://{host}:{server.effective_port}/ "
          f"({n} rater links in {Path(study_dir) / design.RATERS_TSV}; admin token in "
          f"{Path(study_dir) / design.ADMIN_TOKEN}); Ctrl-C stops", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        app.extensions["db3d_store"].close()
