"""/v1/architectures and /v1/datasets: what this server can build and load."""

from __future__ import annotations

from fastapi import APIRouter

from core.catalog import list_architectures, list_datasets
from service.api.deps import CommittingRoute, CurrentTenant
from service.api.schemas import ArchitecturePublic, DatasetPublic

router = APIRouter(prefix="/v1", tags=["catalog"], route_class=CommittingRoute)


@router.get("/architectures")
def architectures(tenant: CurrentTenant) -> list[ArchitecturePublic]:
    return [ArchitecturePublic.model_validate(info) for info in list_architectures()]


@router.get("/datasets")
def datasets(tenant: CurrentTenant) -> list[DatasetPublic]:
    return [DatasetPublic.model_validate(info) for info in list_datasets()]
