"""Use cases shared by HTTP and gRPC: compare two photos, read, update, list and delete scans (tenancy enforced)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from server.analysis import quality
from server.auth import ROLE_COMPARE, ROLE_DELETE, ROLE_READ, ROLE_UPDATE, require_role
from server.domain import (
    Channel,
    Page,
    Principal,
    QualityFilter,
    Scan,
    ScanQuery,
    ScanUpdate,
    parse_reference,
    parse_threshold,
)
from server.errors import DeadlineExceeded, FaceNotComparable, InvalidId, NoFace
from server.inference.context import RequestContext
from server.inference.decode import DecodeLimits, decode_image
from server.inference.pipeline import FaceResult
from server.runtime import Runtime

log = logging.getLogger(__name__)


def parse_scan_id(value: str) -> uuid.UUID:
    """A scan id must be a UUID (400 otherwise)."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise InvalidId(f"{value[:64]!r} is not a valid scan id") from None


@dataclass(slots=True)
class ScanService:
    """The application layer both APIs call; controllers only translate wire formats."""

    runtime: Runtime

    @property
    def limits(self) -> DecodeLimits:
        s = self.runtime.settings
        return DecodeLimits(max_pixels=s.max_image_pixels, min_side=s.min_image_side, max_side=s.max_image_side)

    async def analyze_pair(self, file1: bytes, file2: bytes, *, source: str,
                           deadline: float | None = None) -> tuple[FaceResult, FaceResult]:
        """Decode both images off the loop, then analyse them as one batch of two.

        The request holds one admission permit from before decoding until it ends: with the gate full it is
        refused at once (429 + retry hint) without spending CPU on images that would wait anyway, and once
        admitted it is never refused later.
        """
        with self.runtime.admission.admit():
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.runtime.settings.request_timeout_s
            ctx = RequestContext(source=source, deadline=deadline)
            try:
                async with asyncio.timeout_at(deadline):
                    img1, img2 = await asyncio.gather(
                        asyncio.to_thread(decode_image, file1, self.limits, field="file1"),
                        asyncio.to_thread(decode_image, file2, self.limits, field="file2"),
                    )
                    r1, r2 = await self.runtime.pipeline.analyze([img1, img2], ctx)
            except TimeoutError:
                raise DeadlineExceeded("the request did not complete within its deadline") from None
        if r1 is None:
            raise NoFace("no face found in file1", field="file1")
        if r2 is None:
            raise NoFace("no face found in file2", field="file2")
        for r, name in ((r1, "file1"), (r2, "file2")):
            if r.not_comparable:
                raise FaceNotComparable(f"a face was found in {name} but cannot be compared reliably: "
                                        f"{r.not_comparable}", field=name)
        return r1, r2

    def decision(self, threshold: str | float | None, quality_filter: str | None) -> tuple[float, QualityFilter]:
        """The request's threshold and quality level (400 naming the field when invalid), the server's defaults
        where it sent none; AUTO becomes the level it stands for, so the scan records what was applied."""
        s = self.runtime.settings
        t = s.threshold if threshold is None else parse_threshold(threshold)
        level = QualityFilter.AUTO if quality_filter is None else QualityFilter.parse(quality_filter)
        return t, quality.resolve(level, QualityFilter(s.quality_filter))

    async def compare(self, principal: Principal, *, channel: str | None, reference: str | None,
                      file1: bytes, file2: bytes, source: str, deadline: float | None = None,
                      threshold: str | float | None = None, quality_filter: str | None = None) -> Scan:
        """Analyse both photos, refuse faces below the quality level (422 ``low_quality``), compare the faces at
        the threshold and store the scan (never the images or embeddings)."""
        require_role(principal, ROLE_COMPARE)
        ch = Channel.parse(channel)
        ref = parse_reference(reference)
        t, level = self.decision(threshold, quality_filter)
        started = time.perf_counter()
        r1, r2 = await self.analyze_pair(file1, file2, source=source, deadline=deadline)
        elapsed = time.perf_counter() - started
        quality.check_faces((("file1", r1.analysis), ("file2", r2.analysis)), level)
        cmp = self.runtime.pipeline.compare(r1, r2, threshold=t)
        scan = Scan(
            id=uuid.uuid4(), company_id=principal.company_id, created_date=datetime.now(UTC),
            created_by_id=principal.user_id, reference=ref, sales_channel=ch, compare_result=cmp.result,
            compare_similarity=round(cmp.similarity, 6), elapsed_time=round(elapsed, 6),
            face1=r1.analysis, face2=r2.analysis, threshold=t, quality_filter=level,
        )
        await self.runtime.store.add(scan)
        self.runtime.metrics.scans.labels(result=cmp.result.value).inc()
        return scan

    async def get(self, principal: Principal, scan_id: str) -> Scan:
        require_role(principal, ROLE_READ)
        return await self.runtime.store.get(principal.company_id, parse_scan_id(scan_id))

    async def update(self, principal: Principal, scan_id: str, change: ScanUpdate) -> Scan:
        require_role(principal, ROLE_UPDATE)
        sid = parse_scan_id(scan_id)
        return await self.runtime.store.update(principal.company_id, sid, change, principal.user_id,
                                               datetime.now(UTC))

    async def list(self, principal: Principal, query: ScanQuery) -> Page:
        require_role(principal, ROLE_READ)
        return await self.runtime.store.page(principal.company_id, query)

    async def delete(self, principal: Principal, scan_id: str) -> None:
        require_role(principal, ROLE_DELETE)
        sid = parse_scan_id(scan_id)
        await self.runtime.store.delete(principal.company_id, sid)
        # The audit record: who and what in the message itself (a plain log format drops ``extra`` fields).
        log.info("scan %s deleted by user %r of company %r", sid, principal.user_id, principal.company_id,
                 extra={"scan_id": str(sid), "company_id": principal.company_id, "user_id": principal.user_id})
