"""A Python client of the Topiary REST API (v1), on httpx: ``TopiaryClient``.

Torch-free and independent of the server's internals, so scripts, notebooks and
the ``topiary`` CLI use the same calls::

    from cli.client import TopiaryClient

    with TopiaryClient("http://127.0.0.1:8000", key="tpy_...") as client:
        job = client.submit("spec.yaml")
        job = client.wait(job["id"], on_update=lambda j: print(j["status"], j["phase"]))
        path = client.download(job["id"], "safetensors", "pruned.safetensors")

Every failure (the server unreachable, a 4xx answer, a bad spec file, a download
whose sha256 does not match) is a ``ClientError`` whose message says what was
wrong and what to do.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from core.catalog import CHECKPOINT_FORMATS
from core.errors import TopiaryError

DEFAULT_SERVER = "http://127.0.0.1:8000"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
CHECKPOINT_SUFFIXES = CHECKPOINT_FORMATS
_CHUNK_BYTES = 1024 * 1024

JobUpdate = Callable[[dict[str, Any]], None]


class ClientError(TopiaryError):
    """A request that did not work, with the server's reason when it gave one.

    Attributes:
        status_code: the HTTP status, or None when no answer came (unreachable
            server, local file problems, checksum mismatch).
        code: the server's error code (``not_found``, ``invalid_request``, ...)
            or a local one (``unreachable``, ``spec_file``, ``checksum_mismatch``).
        detail: the server's ``detail`` as sent (a string, or a list of bad fields).
    """

    code = "client_error"

    def __init__(self, message: str, *, status_code: int | None = None,
                 code: str | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        if code is not None:
            self.code = code
        self.detail = detail


def describe_fields(errors: list[dict[str, Any]]) -> str:
    """``loc: msg`` for every bad field of a 422 answer, joined by ``; ``."""
    parts = []
    for error in errors:
        location = [str(part) for part in error.get("loc", []) if part != "body"]
        where = ".".join(location) or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def _hint(status: int) -> str:
    if status == 401:
        return " (pass --key or set TOPIARY_KEY to a key from `topiary keys create`)"
    if status == 503:
        return " (the server's database is not answering; retry in a few seconds)"
    return ""


def _error_from(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
    except ValueError:
        body = None
    code, detail = None, None
    if isinstance(body, dict):
        code, detail = body.get("code"), body.get("detail")
    if isinstance(detail, list):
        reason = f"the server refused the request: {describe_fields(detail)}"
    elif detail:
        reason = str(detail)
    else:
        reason = (f"{response.request.method} {response.request.url.path} answered "
                  f"{response.status_code} {response.reason_phrase}")
    return ClientError(f"{reason}{_hint(response.status_code)}", status_code=response.status_code,
                       code=code or f"http_{response.status_code}", detail=detail)


def load_spec_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a job spec from a YAML (or JSON) file.

    Raises:
        ClientError: the file is missing or unreadable, is not YAML, or is not a mapping.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise ClientError(f"spec file {str(source)!r} does not exist; give the path of a "
                          "YAML job spec (see README, 'Job spec')", code="spec_file") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ClientError(f"cannot read spec file {str(source)!r}: {error}",
                          code="spec_file") from error
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ClientError(f"spec file {str(source)!r} is not valid YAML{line}: {problem}; "
                          "fix the file and submit again", code="spec_file") from error
    if not isinstance(spec, dict):
        raise ClientError(f"spec file {str(source)!r} must hold a mapping (name:, model:, "
                          f"dataset:, ...), not {type(spec).__name__}", code="spec_file")
    return spec


def _etag_digest(response: httpx.Response) -> str | None:
    etag = response.headers.get("etag")
    if not etag:
        return None
    digest = etag.removeprefix("W/").strip('"').lower()
    return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None


def _attachment_name(response: httpx.Response) -> str | None:
    disposition = response.headers.get("content-disposition", "")
    match = re.search(r'filename="?([^";]+)"?', disposition)
    if match is None:
        return None
    return Path(match.group(1)).name or None


class TopiaryClient:
    """The REST API v1 as methods returning the server's JSON (dicts).

    Args:
        server: base URL, e.g. ``http://127.0.0.1:8000`` (default: ``TOPIARY_SERVER``
            or that address).
        key: API key sent as ``Authorization: Bearer``; None sends none (servers
            with ``TOPIARY_AUTH=none``). Default: ``TOPIARY_KEY``.
        timeout: seconds for connecting and for each read.
        transport: an httpx transport (tests, proxies); None for the network.
    """

    def __init__(self, server: str | None = None, key: str | None = None,
                 timeout: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        self.server = (server or os.environ.get("TOPIARY_SERVER") or DEFAULT_SERVER).rstrip("/")
        key = key if key is not None else os.environ.get("TOPIARY_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> TopiaryClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as error:
            raise ClientError(f"the Topiary server at {self.server} did not answer in time "
                              f"({type(error).__name__}); check that it is running and not "
                              "overloaded", code="unreachable") from error
        except httpx.TransportError as error:
            raise ClientError(f"cannot reach the Topiary server at {self.server} ({error}); "
                              "start it with `topiary serve` or point --server / "
                              "TOPIARY_SERVER at it", code="unreachable") from error
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # -- health and catalog -------------------------------------------------

    def ready(self) -> bool:
        """Whether the server answers ``/readyz`` with 200 (False when unreachable)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def architectures(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/architectures"))

    def datasets(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/datasets"))

    # -- jobs ---------------------------------------------------------------

    def submit(self, spec: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
        """Submit a job.

        Args:
            spec: the job spec as a mapping, or the path of a YAML / JSON file.

        Returns:
            The queued job.

        Raises:
            ClientError: a bad spec file, or the server refused the spec (every bad
                field named).
        """
        body = dict(spec) if isinstance(spec, Mapping) else load_spec_file(spec)
        return dict(self._json("POST", "/v1/jobs", json=body))

    def get(self, job_id: str) -> dict[str, Any]:
        """One job: status, phase, progress, baseline and best metrics, error, artifacts."""
        return dict(self._json("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(self, status: str | None = None, limit: int = 50,
                  offset: int = 0) -> dict[str, Any]:
        """The tenant's jobs, newest first: ``{"data": [...], "count", "limit", "offset"}``."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status is not None:
            params["status"] = status
        return dict(self._json("GET", "/v1/jobs", params=params))

    def trials(self, job_id: str) -> list[dict[str, Any]]:
        """Every trial of the job's search (empty before it starts)."""
        return list(self._json("GET", f"/v1/jobs/{job_id}/trials")["data"])

    def pareto(self, job_id: str) -> list[dict[str, Any]]:
        """The feasible trials no other trial beats on accuracy, latency and memory at once."""
        return list(self._json("GET", f"/v1/jobs/{job_id}/pareto")["data"])

    def events(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        """The job's log so far (events with an id above ``after``)."""
        return list(self._json("GET", f"/v1/jobs/{job_id}/events",
                               params={"follow": "false", "after": after}))

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel the job (at once when no worker holds it, else its workers stop soon)."""
        return dict(self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def wait(self, job_id: str, poll: float = 2.0, on_update: JobUpdate | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        """Poll a job until it ends.

        Args:
            job_id: the job.
            poll: seconds between reads.
            on_update: called with the job after every read (the last call sees
                the final state).
            timeout: give up after this many seconds (None: wait for ever).

        Returns:
            The job in its terminal state (succeeded, failed or cancelled).

        Raises:
            ClientError: the server stopped answering, or ``timeout`` passed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL_STATUSES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise ClientError(f"job {job_id} is still {job['status']} after {timeout:g} s; "
                                  "wait longer or cancel it", code="timeout")
            time.sleep(poll)

    # -- files --------------------------------------------------------------

    def download(self, job_id: str, checkpoint_format: str = "safetensors",
                 path: str | os.PathLike[str] | None = None) -> Path:
        """Download a checkpoint, verifying its sha256 against the server's ``ETag``.

        The bytes go to a temporary file beside the destination, which is renamed
        into place only once the checksum matches; a failed download leaves
        nothing behind.

        Args:
            job_id: a succeeded job.
            checkpoint_format: ``safetensors``, ``onnx``, ``pt2`` or ``torchscript``.
            path: destination file, or a folder: an existing one, or a path ending in
                a separator (``exports/``, created with its parents); None: the server's
                file name in the current folder.

        Returns:
            Where the checkpoint now is.

        Raises:
            ClientError: no such checkpoint, an unknown format, or a checksum mismatch.
        """
        if checkpoint_format not in CHECKPOINT_SUFFIXES:
            raise ClientError(f"unknown checkpoint format {checkpoint_format!r}; choose one of "
                              f"{', '.join(CHECKPOINT_SUFFIXES)}", code="invalid_request")
        url = f"/v1/jobs/{job_id}/checkpoint"
        try:
            with self._http.stream("GET", url, params={"format": checkpoint_format}) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                target = self._destination(job_id, checkpoint_format, path, response)
                return self._save_verified(response, target)
        except httpx.TransportError as error:
            raise ClientError(f"downloading {url} from {self.server} failed ({error}); "
                              "retry the download", code="unreachable") from error

    @staticmethod
    def _destination(job_id: str, checkpoint_format: str, path: str | os.PathLike[str] | None,
                     response: httpx.Response) -> Path:
        name = _attachment_name(response) or f"{job_id}{CHECKPOINT_SUFFIXES[checkpoint_format]}"
        if path is None:
            return Path.cwd() / name
        # Path() drops a trailing separator, which names a folder that may not exist yet.
        folder = os.fspath(path).endswith((os.sep, "/"))
        target = Path(path).expanduser()
        return target / name if folder or target.is_dir() else target

    @staticmethod
    def _save_verified(response: httpx.Response, target: Path) -> Path:
        expected = _etag_digest(response)
        if expected is None:
            raise ClientError("the server sent the checkpoint without its sha256 (ETag); "
                              "refusing a file that cannot be verified", code="checksum_missing")
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part",
                                             dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                for chunk in response.iter_bytes(_CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != expected:
                raise ClientError(f"the downloaded checkpoint's sha256 {digest.hexdigest()} does "
                                  f"not match the server's {expected}; the transfer was "
                                  "corrupted, download it again", code="checksum_mismatch")
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target

    def upload_weights(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Upload starting weights (safetensors or a ``torch.save``-d state dict).

        Returns:
            The upload; use its ``id`` as ``model.weights`` in a job spec.

        Raises:
            ClientError: the file is missing, too large, or not plain weights.
        """
        source = Path(path)
        if not source.is_file():
            raise ClientError(f"weights file {str(source)!r} does not exist", code="weights_file")
        with source.open("rb") as handle:
            return dict(self._json("POST", "/v1/weights",
                                   files={"file": (source.name, handle,
                                                   "application/octet-stream")}))

    # ``client.list(status="searching")``, named like the other read methods; defined
    # last so the builtin ``list`` stays visible in the annotations above.
    list = list_jobs
