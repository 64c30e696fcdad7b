"""Use cases shared by HTTP and gRPC: compare two photos, read, update, list and delete scans (tenancy enforced)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

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
from server.errors import DeadlineExceeded, FaceNotComparable, InvalidId, NoFace, Overloaded
from server.inference.admission import Permit
from server.inference.context import RequestContext
from server.inference.decode import (
    DecodeLimits,
    ImageHeader,
    decode_cost,
    decode_scaled,
    read_header,
    reduced_scale,
    scaled_size,
)
from server.inference.decode_budget import ImageCost, Lease, plan_decode
from server.inference.pipeline import FaceResult, working_copy_bytes
from server.logsafe import safe_text
from server.runtime import Runtime

log = logging.getLogger(__name__)

MEMORY_RETRY_MS = 1000  # a large decode takes about a second on one core

def _image_cost(header: ImageHeader, scale: int) -> ImageCost:
    """What one image costs the decode budget decoded at 1/``scale``: its decode, the array and the pipeline's
    working copy of it; for a reduced decode, the same again at full size (a possible re-decode)."""
    peak, kept = decode_cost(header, scale)
    width, height = scaled_size(header.width, header.height, scale)
    if scale == 1:
        return ImageCost(peak, kept + working_copy_bytes(height, width))
    full_peak, full_kept = decode_cost(header)
    return ImageCost(peak, kept + working_copy_bytes(height, width), full_peak,
                     full_kept + working_copy_bytes(header.height, header.width))


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
        """Decode both images off the loop (within the decode memory budget), then analyse them as one batch.

        Admission comes first and has two steps, both before any pixel is decoded: a permit from the gate
        (refused at once when it is full, 429 ``overloaded``), then the decode memory the two images need,
        waited for in arrival order up to half the deadline (429 ``memory`` when it does not come: see
        :meth:`_memory`). A request refused at either step has done no work; once both are granted it is admitted
        for good and never refused later (only its deadline or its departed client can end it).
        """
        with self.runtime.admission.admit() as permit:
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.runtime.settings.request_timeout_s
            ctx = RequestContext(source=source, deadline=deadline)
            try:
                async with asyncio.timeout_at(deadline):
                    r1, r2 = await self._decode_and_analyze([(file1, "file1"), (file2, "file2")], ctx, deadline,
                                                            permit)
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

    async def _decode_and_analyze(self, files: list[tuple[bytes, str]], ctx: RequestContext, deadline: float,
                                  permit: Permit) -> list[FaceResult | None]:
        limits = self.limits
        # Headers only (no pixels): a bad or oversized image is refused here, and the rest priced for the budget.
        headers = await asyncio.to_thread(lambda: [read_header(data, limits, field=name) for data, name in files])
        # A large JPEG is decoded at 1/2, 1/4 or 1/8 (its long side still at least the detector's largest canvas,
        # so detection sees what it always saw) and again at full size only if its face turns out small. The lease
        # covers that re-decode from the start: admitted work never waits for memory again.
        config = self.runtime.pipeline.config
        keep = config.detector_size if config.reduced_decode else 0
        scales = [reduced_scale(h, keep) for h in headers]
        costs = [_image_cost(h, d) for h, d in zip(headers, scales, strict=True)]
        plan = plan_decode(costs, self.runtime.decode_budget.capacity)
        lease = await self._memory(plan.need, deadline, permit)
        loop = asyncio.get_running_loop()
        decodes: list[asyncio.Future[tuple[npt.NDArray[np.uint8], int]]] = []
        images: list[npt.NDArray[np.uint8]] = []

        def decode(data: bytes, name: str, scale: int) -> asyncio.Future[tuple[npt.NDArray[np.uint8], int]]:
            # In a copy of this context (as asyncio.to_thread does), so the decode span joins the request's trace.
            call = functools.partial(contextvars.copy_context().run, decode_scaled, data, limits, field=name,
                                     scale=scale)
            future = loop.run_in_executor(None, call)
            decodes.append(future)
            return asyncio.shield(future)  # a cancelled request does not stop the thread: keep track of it

        async def full_size(i: int) -> npt.NDArray[np.uint8]:
            data, name = files[i]
            return (await decode(data, name, 1))[0]

        try:
            if plan.together:
                decoded = list(await asyncio.gather(*(decode(data, name, d)
                                                      for (data, name), d in zip(files, scales, strict=True))))
            else:  # too large to decode side by side within the budget: one after the other
                decoded = []
                for (data, name), d in zip(files, scales, strict=True):
                    decoded.append(await decode(data, name, d))
            images = [img for img, _ in decoded]
            got = [g for _, g in decoded]
            decoded.clear()
            lease.shrink_to(plan.kept)  # the codecs' buffers are gone; the pipeline holds the RGB arrays
            return await self.runtime.pipeline.analyze(images, ctx, scales=got, full_size=full_size)
        finally:
            images.clear()
            running = [f for f in decodes if not f.done()]
            if running:
                # The request failed or was cancelled while a decode thread still runs: its memory stays
                # counted until the thread ends, so departed clients cannot pile up decodes beyond the budget.
                asyncio.gather(*running, return_exceptions=True).add_done_callback(lambda _: lease.release())
            else:
                lease.release()

    async def _memory(self, need: int, deadline: float, permit: Permit) -> Lease:
        """Bytes from the decode budget, waiting at most half the time left (the rest is for the analysis).

        The wait is the last step of admission: the request holds its gate permit meanwhile (so the gate also
        bounds how many wait), and one that gets no memory in time is refused as ``memory`` (429 with a retry
        hint), counted as refused rather than admitted: it has decoded nothing and queued for no model.
        """
        budget = self.runtime.decode_budget
        wait_s = max(0.0, (deadline - asyncio.get_running_loop().time()) / 2)
        try:
            async with asyncio.timeout(wait_s):
                return await budget.acquire(need)
        except TimeoutError:
            permit.refuse("memory")
            raise Overloaded("too many large images are being decoded (FACEREC_DECODE_MEMORY_MB); retry later",
                             retry_after_ms=MEMORY_RETRY_MS) from None

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
        # The audit record: who and what in the message itself (a plain log format drops ``extra`` fields). The
        # claims come from the caller's token: escaped in the message and in the JSON members alike.
        user, company = safe_text(principal.user_id), safe_text(principal.company_id)
        log.info("scan %s deleted by user '%s' of company '%s'", sid, user, company,
                 extra={"scan_id": str(sid), "company_id": company, "user_id": user})
