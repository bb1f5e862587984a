"""/v1/weights: upload starting weights (checked before they are kept), read one back,
delete one."""

from __future__ import annotations

from fastapi import APIRouter, BackgroundTasks, UploadFile

from service.api.deps import CommittingRoute, CurrentTenant, SessionDep, SettingsDep
from service.api.schemas import ErrorPublic, WeightsPublic
from service.uploads import delete_upload, get_upload, remove_upload_file, store_upload

router = APIRouter(prefix="/v1/weights", tags=["weights"], route_class=CommittingRoute)


@router.post("", status_code=201, responses={
    413: {"model": ErrorPublic, "description": "above TOPIARY_MAX_UPLOAD_MB, or over the "
                                              "tenant's TOPIARY_UPLOAD_QUOTA_MB"},
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


@router.delete("/{upload_id}", status_code=204, responses={
    404: {"model": ErrorPublic},
    409: {"model": ErrorPublic, "description": "an unfinished job starts from it"}})
def delete_weights(upload_id: str, tenant: CurrentTenant, session: SessionDep,
                   settings: SettingsDep, background: BackgroundTasks) -> None:
    """Delete an upload and its file; its size no longer counts against the quota."""
    path = delete_upload(session, tenant.id, upload_id)
    assert settings.upload_dir is not None
    # Once the deletion has committed (the route's thread commits as it returns).
    background.add_task(remove_upload_file, path, settings.upload_dir)
