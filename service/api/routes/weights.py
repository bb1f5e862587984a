"""/v1/weights: upload starting weights (checked before they are kept), read one back."""

from __future__ import annotations

from fastapi import APIRouter, UploadFile

from service.api.deps import CommittingRoute, CurrentTenant, SessionDep, SettingsDep
from service.api.schemas import ErrorPublic, WeightsPublic
from service.uploads import get_upload, store_upload

router = APIRouter(prefix="/v1/weights", tags=["weights"], route_class=CommittingRoute)


@router.post("", status_code=201, responses={
    413: {"model": ErrorPublic, "description": "above TOPIARY_MAX_UPLOAD_MB"},
    422: {"model": ErrorPublic, "description": "not safetensors / a plain state dict"}})
def upload_weights(file: UploadFile, tenant: CurrentTenant, session: SessionDep,
                   settings: SettingsDep) -> WeightsPublic:
    """Upload a safetensors file or a ``torch.save``-d state dict; returns its id.

    Use the id as ``model.weights`` in a job spec. Pickles that could run code are
    refused without being loaded.
    """
    upload = store_upload(session, settings, tenant.id, file.filename, file.file)
    return WeightsPublic.from_row(upload)


@router.get("/{upload_id}", responses={404: {"model": ErrorPublic}})
def read_weights(upload_id: str, tenant: CurrentTenant, session: SessionDep) -> WeightsPublic:
    return WeightsPublic.from_row(get_upload(session, tenant.id, upload_id))
