"""/v1/jobs/{id}/trials, /pareto and /checkpoint: what a job found and produced."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import FileResponse, Response

from core.catalog import CHECKPOINT_FORMATS
from service import jobs
from service.api.deps import CommittingRoute, CurrentTenant, SessionDep, StudyReaderDep
from service.api.schemas import ErrorPublic, TrialsPublic
from service.errors import NotFoundError
from service.trials import TrialPublic, pareto_front

router = APIRouter(prefix="/v1/jobs", tags=["results"], route_class=CommittingRoute)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorPublic, "description": "no such job (or no checkpoint yet)"}}
CheckpointFormat = Literal["safetensors", "onnx", "pt2", "torchscript"]  # CHECKPOINT_FORMATS
_SUFFIXES = CHECKPOINT_FORMATS


def _trials_public(job_id: str, study_name: str | None,
                   trials: list[TrialPublic]) -> TrialsPublic:
    return TrialsPublic(job_id=job_id, study_name=study_name, count=len(trials),
                        data=trials)


@router.get("/{job_id}/trials", responses=NOT_FOUND)
def read_trials(job_id: str, tenant: CurrentTenant, session: SessionDep,
                reader: StudyReaderDep) -> TrialsPublic:
    """Every trial of the job's study (empty before the search starts)."""
    job = jobs.get_job(session, job_id, tenant.id)
    return _trials_public(job.id, job.study_name, reader.trials(job.study_name))


@router.get("/{job_id}/pareto", responses=NOT_FOUND)
def read_pareto(job_id: str, tenant: CurrentTenant, session: SessionDep,
                reader: StudyReaderDep) -> TrialsPublic:
    """Feasible complete trials not beaten on accuracy, latency and memory at once."""
    job = jobs.get_job(session, job_id, tenant.id)
    return _trials_public(job.id, job.study_name, pareto_front(reader.trials(job.study_name)))


CHECKPOINT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND, 200: {"content": {"application/octet-stream": {}}},
    304: {"description": "If-None-Match matched the checkpoint's sha256"}}


# HEAD too: a client (or a proxy) learns the size and ETag without the download.
@router.head("/{job_id}/checkpoint", response_class=FileResponse, responses=CHECKPOINT_RESPONSES)
@router.get("/{job_id}/checkpoint", response_class=FileResponse, responses=CHECKPOINT_RESPONSES)
def download_checkpoint(
        job_id: str, tenant: CurrentTenant, session: SessionDep,
        checkpoint_format: Annotated[CheckpointFormat, Query(alias="format")] = "safetensors",
        if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """The best pruned model, streamed from disk; ``ETag`` is its sha256."""
    job = jobs.get_job(session, job_id, tenant.id)
    artifact = jobs.get_artifact(session, job.id, checkpoint_format)
    if artifact is None:
        raise NotFoundError(f"job {job.id} has no {checkpoint_format} checkpoint (status "
                            f"{job.status}); checkpoints are written when a job succeeds")
    path = Path(artifact.path)
    if not path.is_file():
        raise NotFoundError(f"the {checkpoint_format} checkpoint of job {job.id} is missing "
                            "from the server's artifact storage; ask the operator")
    etag = f'"{artifact.sha256}"'
    if if_none_match is not None and etag in {tag.strip() for tag in if_none_match.split(",")}:
        return Response(status_code=304, headers={"ETag": etag})
    stem = re.sub(r"[^\w.\-]+", "_", job.name) or job.id
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"{stem}{_SUFFIXES[checkpoint_format]}",
                        headers={"ETag": etag})
