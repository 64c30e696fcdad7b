"""HTTP controllers: translate the wire format to ScanService calls and back; nothing else."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, head, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter

from server.api.http.bodies import read_json_object
from server.api.http.forms import read_compare_form
from server.api.http.openapi import (
    COMPARE_RESPONSES,
    DELETE_RESPONSES,
    DELETE_SCAN,
    ENTITY_RESPONSES,
    GET_SCAN,
    LIST_RESPONSES,
    LIST_SCANS,
    READY_RESPONSES,
    UPDATE_RESPONSES,
    UPDATE_SCAN,
    CompareFormOperation,
    UpdateBodyOperation,
    compare_operation_id,
)
from server.api.query import build_query
from server.api.schemas import CompareResponse, ScanEntity, ScanPage, scan_update_of
from server.auth import ROLE_UPDATE, require_role
from server.domain import Principal
from server.service import ScanService

ISO_UTC = "ISO 8601 date or date-time, UTC when no offset is given"
# Explicit markers: Litestar 3 stops inferring dependencies and parameters from bare names.
Caller = NamedDependency[Principal]
Service = NamedDependency[ScanService]
COMPARE_PATHS = ["/face-recognition-sdk/v1/compare_face", "/v1/compare_face"]
# The largest legitimate PUT body is an entity read back whole (2 x 68 landmarks): about 10 KB.
MAX_UPDATE_BYTES = 16 * 1024
MAX_UPDATE_DEPTH = 8  # the entity nests 4 levels (face -> landmark_68 -> point)


class CompareController(Controller):
    """``POST .../compare_face``: compare the faces of two photos and store the scan."""

    tags = ("compare",)

    @post(COMPARE_PATHS, status_code=200, responses=COMPARE_RESPONSES, operation_class=CompareFormOperation,
          operation_id=compare_operation_id, summary="Compare the faces in two images",
          description="Needs role `face:compare`. Content types of the files are not trusted: decoding "
          "decides whether a file is a supported image.")
    async def compare_face(self, request: Request[Any, Any, Any], principal: Caller,
                           service: Service) -> CompareResponse:
        s = service.runtime.settings
        form = await read_compare_form(request, max_file_bytes=s.max_file_bytes,
                                       max_request_bytes=s.max_request_bytes)
        scan = await service.compare(principal, channel=form.channel, reference=form.reference,
                                     file1=form.file1, file2=form.file2, source="http", threshold=form.threshold,
                                     quality_filter=form.quality_filter)
        return CompareResponse.of(scan)


class ScanController(Controller):
    """Read, update, list and delete the caller's company's scans (camelCase entity)."""

    path = "/v1/face-recognition"
    tags = ("scans",)

    @get("/{scan_id:str}", responses=ENTITY_RESPONSES, summary="Get a scan (role `face:read`)",
         operation_id=GET_SCAN)
    async def get_scan(self, scan_id: FromPath[str], principal: Caller, service: Service) -> ScanEntity:
        return ScanEntity.of(await service.get(principal, scan_id))

    @put("/{scan_id:str}", responses=UPDATE_RESPONSES, summary="Update a scan (role `face:update`)",
         operation_id=UPDATE_SCAN, operation_class=UpdateBodyOperation,
         description="Only compareResult, compareSimilarity, salesChannel and reference change; the entity's "
         "server-owned fields (id, companyId, createdDate, createdById, ...) are accepted and ignored, any other "
         f"key is a 400. `application/json` only, at most {MAX_UPDATE_BYTES} bytes.")
    async def update_scan(self, scan_id: FromPath[str], request: Request[Any, Any, Any], principal: Caller,
                          service: Service) -> ScanEntity:
        require_role(principal, ROLE_UPDATE)  # authenticated (the dependency) and authorised before any body read
        body = await read_json_object(request, max_bytes=MAX_UPDATE_BYTES, max_depth=MAX_UPDATE_DEPTH)
        return ScanEntity.of(await service.update(principal, scan_id, scan_update_of(body)))

    @get("/", responses=LIST_RESPONSES, summary="List scans, Spring Data page shape (role `face:read`)",
         operation_id=LIST_SCANS)
    async def list_scans(
        self, *, principal: Caller, service: Service,
        page: Annotated[int, QueryParameter(description="0-based page number")] = 0,
        size: Annotated[int, QueryParameter(description="page size, 1..200")] = 20,
        sort: Annotated[list[str] | None, QueryParameter(description="`field[,asc|desc]`, repeatable")] = None,
        reference: FromQuery[str | None] = None,
        sales_channel: Annotated[str | None, QueryParameter(name="salesChannel")] = None,
        compare_result: Annotated[str | None, QueryParameter(name="compareResult")] = None,
        created_from: Annotated[str | None, QueryParameter(name="createdFrom", description=ISO_UTC)] = None,
        created_to: Annotated[str | None, QueryParameter(name="createdTo", description=ISO_UTC + " (excl.)")] = None,
    ) -> ScanPage:
        query = build_query(page=page, size=size, sort=sort, reference=reference, sales_channel=sales_channel,
                            compare_result=compare_result, created_from=created_from, created_to=created_to)
        return ScanPage.of(await service.list(principal, query))

    @delete("/{scan_id:str}", responses=DELETE_RESPONSES, summary="Delete a scan (role `face:delete`)",
            operation_id=DELETE_SCAN)
    async def delete_scan(self, scan_id: FromPath[str], principal: Caller, service: Service) -> None:
        await service.delete(principal, scan_id)


class HealthController(Controller):
    """Liveness, readiness and Prometheus metrics; no authentication (keep them off the public ingress)."""

    tags = ("operations",)

    @get("/health/live", summary="The process is running", operation_id="getLiveness")
    async def live(self) -> dict[str, str]:
        return {"status": "ok"}

    # HEAD: load balancers and uptime checkers often probe with HEAD; same status, no body.
    @head("/health/live", summary="The process is running (no body)", operation_id="headLiveness")
    async def live_head(self) -> None:
        return None

    @get("/health/ready", summary="Models loaded and the store answering (503 otherwise)",
         responses=READY_RESPONSES, operation_id="getReadiness")
    async def ready(self, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        runtime = request.app.state.runtime
        components, reasons = await runtime.readiness_report()
        ok = all(components.values())
        body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "components": components}
        if reasons:
            body["reasons"] = reasons  # why each failing component fails (no paths, no SQL)
        workers = runtime.worker_states()
        if workers is not None:  # `--workers N`: each worker's pid and readiness
            body["workers"] = workers
        return Response(body, status_code=200 if ok else 503)

    @head("/health/ready", summary="Readiness as a status code only (200 or 503)", operation_id="headReadiness",
          responses=READY_RESPONSES)
    async def ready_head(self, request: Request[Any, Any, Any]) -> Response[None]:
        components, _ = await request.app.state.runtime.readiness_report()
        return Response(None, status_code=200 if all(components.values()) else 503)

    @get("/metrics", summary="Prometheus exposition", media_type="text/plain", operation_id="getMetrics")
    async def metrics(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        body, content_type = request.app.state.runtime.metrics.render()
        return Response(body, media_type=content_type)
