"""The face pipeline: detect -> pick a face -> landmarks (two passes) -> 68 points -> align -> embed -> attributes.

Every stage works on a batch; CPU-bound pre/post-processing runs off the event loop, model calls go through an
``InferenceRunner`` (the per-model dynamic batchers in front of a backend, or the backend directly) together with
the request's context (transport label, deadline), passed explicitly.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from server.analysis.attributes import FaceGeometry, analyze_faces
from server.analysis.calibration import ScoreCalibration
from server.domain import CompareResult, Comparison, FaceAnalysis
from server.inference.backend import ModelSpec
from server.inference.context import RequestContext
from server.inference.models.detector import (
    DIAGONALS,
    ORIENTATIONS,
    Detection,
    Detector,
    Placement,
    eye_angle,
    most_prominent,
    nearest_centre,
    place,
    shifted,
    square_crop,
)
from server.inference.models.embedder import Embedder
from server.inference.models.landmarker import Landmarker, Rois
from server.inference.models.mesh68 import mesh_to_68

NDF = npt.NDArray[np.float32]

# Detector rows one image can cost at most: the first pass, then either the two small upright-check rows (a face
# found at >= upright_score) or, only when the first pass finds nothing or a face that may not be upright, the four
# quarter turns (padded) and, only when none of those is confidently upright, the four diagonal turns. The batchers'
# queue bounds derive from it.
DETECTOR_ROWS_PER_IMAGE = 1 + max(2, len(ORIENTATIONS) + len(DIAGONALS))
# Landmarker rows the detection step itself may add per image (the orientation check on close fallback candidates:
# at most one per candidate), on top of the landmark passes of the chosen face.
LANDMARKER_CHECK_ROWS_PER_IMAGE = len(ORIENTATIONS) + len(DIAGONALS)
# The most rows one image can have queued at one model at a time (a bound over all stages: the detection step's
# fallback turns and orientation checks are the largest). The runtime sizes the batchers' safety bound from it, with
# headroom, so an admitted request can never meet a full queue.
MAX_ROWS_PER_IMAGE = max(DETECTOR_ROWS_PER_IMAGE, LANDMARKER_CHECK_ROWS_PER_IMAGE)


# Images up to this size get a 4-channel working copy for the landmark and alignment warps: OpenCV warps 4-channel
# pixels about twice as fast as 3-channel ones, with identical RGB values (about 1-2 ms less host CPU per LFW pair,
# replayed backend). Past ~0.5 MP making the copy costs more than the four or so warps per face save (1 MP photos
# measured 1 ms worse), so larger images warp their RGB pixels. The copy (4 bytes a pixel) is priced in the decode
# memory budget (:func:`working_copy_bytes`).
WARP_COPY_MAX_PIXELS = 400_000


def working_copy_bytes(height: int, width: int) -> int:
    """Bytes of the pipeline's 4-channel working copy of an image of this size (0: it warps the RGB pixels)."""
    return 4 * height * width if height * width <= WARP_COPY_MAX_PIXELS else 0


def _warp_sources(images: list[npt.NDArray[np.uint8]]) -> list[npt.NDArray[np.uint8]]:
    """The images the landmark and alignment warps read: 4-channel copies when every image is small enough."""
    if all(img.shape[0] * img.shape[1] <= WARP_COPY_MAX_PIXELS for img in images):
        return [np.asarray(cv2.cvtColor(img, cv2.COLOR_RGB2RGBA), dtype=np.uint8) for img in images]
    return images


# Image i decoded at full size (the service's decoder, within the request's decode memory lease).
FullSize = Callable[[int], Awaitable[npt.NDArray[np.uint8]]]


class InferenceRunner(Protocol):
    """Anything that runs one batch through a named model for a request (batchers in front of a backend, or a
    backend directly through ``DirectRunner``)."""

    async def infer(self, model: str, inputs: dict[str, NDF], ctx: RequestContext) -> dict[str, NDF]:
        """Run ``model`` on a batch on behalf of the request ``ctx``."""
        ...


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Knobs of the pipeline (taken from Settings by the runtime)."""

    detector_size: int = 640  # the largest detector canvas; smaller photos run on smaller buckets, never upscaled
    detector_score_threshold: float = 0.75
    # A first-pass face scoring below this may be rotated (YuNet still finds upside-down faces, at 0.75-0.9, with
    # keypoints drawn as if upright): the four orientations are then tried and the best-scoring one kept.
    upright_score: float = 0.9
    fallback_pad: float = 0.25  # margin (x the long side) of the fallback passes: frame-filling faces need context
    candidate_margin: float = 0.1  # fallback candidates this close to the best score get the FaceMesh check
    # First-pass faces scoring >= upright_score are checked too: a crop 1.6x the box, levelled by the keypoints'
    # eye line, is scored as it is and turned half a turn; an upside-down face scores higher turned. Both on a
    # small canvas (2 x 160x160, about an eighth of a 640x640 pass).
    upright_check: bool = True
    upright_check_size: int = 160
    presence_weight: float = 0.1
    min_face_px: int = 16
    refine_landmarks: bool = True  # re-run FaceMesh on ROIs re-centred and re-levelled from the previous mesh
    # YuNet's eye points under-read roll (about 9 deg for a 30 deg tilt) and each FaceMesh pass closes only about
    # half of the remaining tilt, so one refinement leaves up to ~6 deg of roll error at 30 deg; two leave < 1 deg.
    refine_passes: int = 2
    # Faces tilted ~45 degrees off the nearest quarter turn need a third pass to read roll within 1 degree.
    extra_refine_passes: int = 2
    converged_roll_deg: float = 1.0
    # ... and a face's refinement stops once its ROI moves (centre) and resizes by under this share of its side
    # while turning under converged_roll_deg: the next pass would read nearly the same crop (bench.attributes).
    converged_shift: float = 0.03
    align_on_mesh: bool = True  # 5 alignment points from the mesh (finer) rather than the detector's keypoints
    flip_embedding: bool = False  # sum with the mirror image's embedding: no gain on LFW-dev, twice the cost
    threshold: float = 0.5
    # A face past these is found but not compared (422 face_not_comparable naming the file and the reason).
    # lfw-dev's most turned face reads |yaw| 47.5 (p99 35), compared correctly: accuracy and FAR are measured up to
    # there and no further (`python -m bench.robust --sweeps yaw`, README "Turned heads"), so the limit sits just
    # past it, at 50, and every lfw-dev photo is still compared.
    # lfw-dev photos shrunk to 64 px (faces about 20-28 px wide) still compare at 100 % (bench.robust, `full` at
    # 64; a 10-px limit refused 5 of 92 of them), so only faces about as small as the detector keeps
    # (FACEREC_MIN_FACE_PX 16) are refused as too small.
    max_abs_yaw_deg: float = 50.0
    min_eye_dist_px: float = 6.0
    # A JPEG decoded at reduced scale (its long side still >= detector_size, so detection sees what it always saw)
    # is decoded again at full size when the chosen face is narrower than this in it: the landmarker reads
    # 1.5x the face at 192 px and the embedder the face at about 100 px, so a face this large loses nothing.
    full_resolution_face_px: int = 160
    reduced_decode: bool = True  # the service decodes large JPEGs at reduced scale (False: always at full size)
    # OpenCV's own threads per call (process-wide; 0 leaves OpenCV's default). Requests already run side by side
    # on the executor's threads and the warps here are small: handing each one to OpenCV's pool cost about 15 %
    # more host CPU per pair than running it on the calling thread (measured with a replayed backend, 2 cores).
    opencv_threads: int = 1


@dataclass(frozen=True, slots=True)
class Chosen:
    """The face picked in one image: detection in original-image pixels, how many faces its pass found, and the
    clockwise rotation (0/90/180/270) that made it upright for the detector."""

    detection: Detection
    faces_found: int
    orientation: int = 0


@dataclass(frozen=True, slots=True)
class FaceResult:
    """One analysed face: the API's analysis plus the embedding (kept in memory only, never stored)."""

    analysis: FaceAnalysis
    embedding: NDF  # (128,) L2-normalised
    not_comparable: str | None = None  # why this face cannot be compared reliably (None: it can)


class FacePipeline:
    """Batch-first face analysis and comparison over any inference runner."""

    def __init__(self, runner: InferenceRunner, specs: dict[str, ModelSpec], config: PipelineConfig,
                 calibration: ScoreCalibration | None = None) -> None:
        self.runner = runner
        self.config = config
        if config.opencv_threads > 0:
            cv2.setNumThreads(config.opencv_threads)
        self.detector = Detector(config.detector_size, config.detector_score_threshold,
                                 min_face_px=config.min_face_px)
        self.landmarker = Landmarker(specs["landmarker"])
        self.embedder = Embedder(specs["embedder"])
        self.calibration = calibration or ScoreCalibration()

    async def detect(self, images: list[npt.NDArray[np.uint8]], ctx: RequestContext,
                     scales: Sequence[int] | None = None) -> list[list[Detection]]:
        """All faces per image found by the first (upright, own-size) pass, best score first (``scales``: see
        :meth:`analyze`)."""
        return await self._detect(images, [self.detector.place(img) for img in images], ctx,
                                  self._min_face_px(scales, len(images)))

    def _min_face_px(self, scales: Sequence[int] | None, n: int) -> list[float]:
        """The smallest face kept in each image, in its own pixels: FACEREC_MIN_FACE_PX means full-size pixels."""
        return [self.config.min_face_px / s for s in (scales or [1] * n)]

    async def _detect(self, images: list[npt.NDArray[np.uint8]], placements: list[Placement],
                      ctx: RequestContext, min_px: list[float]) -> list[list[Detection]]:
        """Detections for each (image, placement); one detector call per canvas size, all sizes concurrently."""
        groups: dict[int, list[int]] = {}
        for j, p in enumerate(placements):
            groups.setdefault(p.size, []).append(j)

        async def run(members: list[int]) -> list[list[Detection]]:
            imgs, pls = [images[j] for j in members], [placements[j] for j in members]
            batch = await asyncio.to_thread(self.detector.preprocess_placed, imgs, pls)
            out = await self.runner.infer(self.detector.name, {"input": batch}, ctx)
            return await asyncio.to_thread(self.detector.postprocess_placed, out, pls, [min_px[j] for j in members])

        found = await asyncio.gather(*(run(m) for m in groups.values()))
        results: list[list[Detection]] = [[] for _ in placements]
        for members, dets in zip(groups.values(), found, strict=True):
            for j, d in zip(members, dets, strict=True):
                results[j] = d
        return results

    async def detect_faces(self, images: list[npt.NDArray[np.uint8]], ctx: RequestContext,
                           scales: Sequence[int] | None = None) -> list[Chosen | None]:
        """The face to compare in each image (``None``: no face in any orientation).

        1. Each photo at its own size (bucketed canvas, never upscaled), upright.
        2. Only for images where that finds nothing, or a face scoring under ``upright_score`` (an upside-down
           face still scores 0.75-0.9, with keypoints drawn as if upright): the photo padded, at the four quarter
           turns, as one batch.
        3. Only where still no candidate reaches ``upright_score``: the four diagonal turns (a face ~45 degrees
           off every quarter turn).
        4. Where candidates from 2-3 score within ``candidate_margin`` of the best, YuNet alone cannot tell an
           upright reading from an upside-down one: FaceMesh's face-presence score on each candidate's ROI
           (one landmarker batch) breaks the tie, ranking by ``score + presence_weight * presence``.
        A face kept from 1 (when confident) gets the upright check (:meth:`_check_upright`).
        Coordinates stay in the original image.
        """
        min_px = self._min_face_px(scales, len(images))
        first = await self.detect(images, ctx, scales)
        chosen: list[Chosen | None] = [_choose(d, img.shape[:2], 0) for d, img in zip(first, images, strict=True)]
        if self.config.upright_check:
            confident = [i for i, c in enumerate(chosen)
                         if c is not None and c.detection.score >= self.config.upright_score]
            await self._check_upright(images, chosen, confident, ctx, min_px)
        cands: dict[int, list[Chosen]] = {}
        for turns in (ORIENTATIONS, DIAGONALS):
            retry = [i for i, c in enumerate(chosen) if c is None or c.detection.score < self.config.upright_score]
            if not retry:
                break
            jobs = [(i, rot) for i in retry for rot in turns]
            placements = [self.detector.place(images[i], pad=self.config.fallback_pad, rotation=rot)
                          for i, rot in jobs]
            found = await self._detect([images[i] for i, _ in jobs], placements, ctx, [min_px[i] for i, _ in jobs])
            for (i, rot), dets in zip(jobs, found, strict=True):
                cand = _choose(dets, images[i].shape[:2], rot)
                if cand is None:
                    continue
                # The first pass's own face is left out: the padded upright candidate stands for it.
                cands.setdefault(i, []).append(cand)
                best = chosen[i]
                if best is None or cand.detection.score > best.detection.score:
                    chosen[i] = cand
        close = {i: [c for c in cs if c.detection.score >= max(x.detection.score for x in cs)
                     - self.config.candidate_margin] for i, cs in cands.items()}
        close = {i: cs for i, cs in close.items() if len(cs) > 1}
        if close:
            flat = [(i, c) for i, cs in close.items() for c in cs]
            boxes = np.stack([c.detection.box for _, c in flat])
            eyes = np.stack([c.detection.kps[:2] for _, c in flat])
            _, presence = await self._mesh(images, np.array([i for i, _ in flat], dtype=np.intp),
                                           Landmarker.rois(boxes, eyes), ctx)
            rank = [c.detection.score + self.config.presence_weight * float(p)
                    for (_, c), p in zip(flat, presence, strict=True)]
            for i in close:
                k = max((k for k, (j, _) in enumerate(flat) if j == i), key=lambda k: rank[k])
                chosen[i] = flat[k][1]
        return chosen

    async def _check_upright(self, images: list[npt.NDArray[np.uint8]], chosen: list[Chosen | None],
                             todo: list[int], ctx: RequestContext, min_px: list[float]) -> None:
        """Replace (in place) confidently found first-pass faces that score higher turned half a turn.

        YuNet finds an upside-down face at up to ~0.9 with its keypoints drawn as if upright, so the first-pass
        score alone lets a few through (about 3 % of faces rotated 150-210 degrees on lfw-dev). Scoring the same
        levelled crop both ways round separates them (upright faces scored higher as they are in every lfw-dev
        case measured, tilted up to 45 degrees; bench/README.md).
        """
        todo = [i for i in todo if chosen[i] is not None]
        if not todo:
            return
        crops, origins, jobs = [], [], []
        for i in todo:
            det = chosen[i].detection  # type: ignore[union-attr]
            crop, origin = square_crop(images[i], det.box, 1.6)
            level = round(-eye_angle(det.kps)) % 360
            for turn in (0, 180):
                crops.append(crop)
                jobs.append(place(crop.shape[0], crop.shape[1], self.config.upright_check_size,
                                  rotation=(level + turn) % 360))
            origins.append(origin)
        found = await self._detect(crops, jobs, ctx, [min_px[i] for i in todo for _ in (0, 180)])
        for k, i in enumerate(todo):
            size = crops[2 * k].shape[:2]
            as_is, turned = nearest_centre(found[2 * k], size), nearest_centre(found[2 * k + 1], size)
            if turned is not None and (as_is is None or turned.score > as_is.score):
                det = shifted(turned, origins[k], images[i].shape[:2])
                prev = chosen[i]
                chosen[i] = Chosen(det, prev.faces_found if prev else 1, _quarter_turn(det))

    async def analyze(self, images: list[npt.NDArray[np.uint8]], ctx: RequestContext, *,
                      scales: Sequence[int] | None = None, full_size: FullSize | None = None
                      ) -> list[FaceResult | None]:
        """Analyse the most prominent face of each RGB image; ``None`` where no face was found.

        ``scales[i]`` > 1: image ``i`` was decoded at 1/``scales[i]`` of its size (JPEG DCT scaling); every
        coordinate in its result is still in full-size pixels. ``full_size(i)`` gives image ``i`` at full size: it
        is asked for (one image at a time) when the face chosen in the reduced image is under
        ``full_resolution_face_px``, so landmarks and embedding read it at full detail.
        """
        picked = await self.detect_faces(images, ctx, scales)
        factors = [1] * len(images) if scales is None else list(scales)
        images = list(images)
        for i, c in enumerate(picked):
            if (full_size is not None and c is not None and factors[i] > 1
                    and min(c.detection.width, c.detection.height) < self.config.full_resolution_face_px):
                images[i] = await full_size(i)
                picked[i] = _full_size_choice(c, factors[i])
                factors[i] = 1
        chosen = [(i, c.detection, c.faces_found) for i, c in enumerate(picked) if c is not None]
        results: list[FaceResult | None] = [None] * len(images)
        if not chosen:
            return results
        index = np.array([c[0] for c in chosen], dtype=np.intp)
        boxes = np.stack([c[1].box for c in chosen])
        kps = np.stack([c[1].kps for c in chosen])

        rois = Landmarker.first_rois(boxes, kps[:, :2])

        def first_pass() -> tuple[list[npt.NDArray[np.uint8]], NDF]:
            """One hop for the warp sources and the first landmarker batch."""
            sources = _warp_sources(images)
            return sources, self.landmarker.preprocess(sources, index, rois.affines())

        sources, batch = await asyncio.to_thread(first_pass)
        out = await self.runner.infer(self.landmarker.name, {self.landmarker.input_name: batch}, ctx)
        mesh, presence = self.landmarker.postprocess(out, rois.affines())
        if self.config.refine_landmarks:
            mesh, presence = await self._refine(sources, index, rois, mesh=mesh, presence=presence, ctx=ctx)
        flip = self.config.flip_embedding
        kps_points = None if self.config.align_on_mesh else kps

        def embedder_input() -> tuple[NDF, npt.NDArray[np.uint8], NDF]:
            """One hop for the 68 points, the aligned crops and the embedder's batch."""
            pts68 = mesh_to_68(mesh)
            crops = Embedder.align(sources, index, five_points(pts68) if kps_points is None else kps_points)
            return pts68, crops, Embedder.preprocess(crops, flip=flip)

        pts68, crops, emb_in = await asyncio.to_thread(embedder_input)
        geoms = [
            FaceGeometry(box=c[1].box, kps=c[1].kps, score=c[1].score, faces_found=c[2], mesh=mesh[m],
                         points68=pts68[m], presence=float(presence[m]), scale=factors[c[0]])
            for m, c in enumerate(chosen)
        ]
        # The attributes need the crops, not the embeddings: they are computed while the embedder runs.
        emb_out, analyses = await asyncio.gather(
            self.runner.infer(self.embedder.name, {self.embedder.input_name: emb_in}, ctx),
            asyncio.to_thread(analyze_faces, images, index, geoms, crops))
        embeddings = self.embedder.postprocess(emb_out, flip=flip)
        for m, (i, _, _) in enumerate(chosen):
            pick = picked[i]
            orientation = pick.orientation if pick is not None else 0
            analysis = dataclasses.replace(analyses[m], orientation_correction=orientation)
            results[i] = FaceResult(analysis, embeddings[m], comparability_issue(analysis, self.config))
        return results

    async def _refine(self, images: list[npt.NDArray[np.uint8]], index: npt.NDArray[np.intp], rois: Rois, *,
                      mesh: NDF, presence: NDF, ctx: RequestContext) -> tuple[NDF, NDF]:
        """Up to ``refine_passes`` FaceMesh passes on ROIs re-centred and re-levelled from the previous mesh, then up
        to ``extra_refine_passes`` more for the faces whose roll still moved by over ``converged_roll_deg`` in the
        last pass (strongly tilted faces: YuNet reads about half of a 45-degree tilt, and each pass closes about
        half of the rest).

        A face stops as soon as its ROI has converged: the ROI its latest mesh gives is within
        ``converged_roll_deg`` and ``converged_shift`` (x the ROI's side, centre and side) of the one that mesh was
        read on, so another pass would read (almost) the same crop again (about a third of the lfw-dev faces stop
        after one refinement instead of two).
        """
        cfg = self.config
        moved = np.full(len(index), np.inf)
        done = np.zeros(len(index), dtype=bool)

        def step(k: int, rois: Rois, mesh: NDF) -> tuple[npt.NDArray[np.intp], Rois, NDF | None]:
            """The faces the next pass reads, their new ROIs and the landmarker batch (None: no pass left)."""
            nxt = Landmarker.roi_params_from_mesh(mesh)
            done[:] |= rois.converged(nxt, roll_deg=cfg.converged_roll_deg, shift=cfg.converged_shift)
            want = ~done if k < cfg.refine_passes else ~done & (moved > cfg.converged_roll_deg)
            todo = np.flatnonzero(want)
            sub = nxt.take(todo)
            batch = self.landmarker.preprocess(images, index[todo], sub.affines()) if todo.size else None
            return todo, sub, batch

        for k in range(cfg.refine_passes + cfg.extra_refine_passes):
            todo, sub, batch = await asyncio.to_thread(step, k, rois, mesh)
            if batch is None:
                break
            before = _mesh_roll(mesh[todo])
            out = await self.runner.infer(self.landmarker.name, {self.landmarker.input_name: batch}, ctx)
            new_mesh, new_presence = self.landmarker.postprocess(out, sub.affines())
            mesh, presence = mesh.copy(), presence.copy()
            mesh[todo], presence[todo] = new_mesh, new_presence
            rois = rois.put(todo, sub)
            moved[todo] = np.abs((_mesh_roll(new_mesh) - before + 180.0) % 360.0 - 180.0)
        return mesh, presence

    async def _mesh(self, images: list[npt.NDArray[np.uint8]], index: npt.NDArray[np.intp],
                    affines: npt.NDArray[np.float64], ctx: RequestContext) -> tuple[NDF, NDF]:
        batch = await asyncio.to_thread(self.landmarker.preprocess, images, index, affines)
        out = await self.runner.infer(self.landmarker.name, {self.landmarker.input_name: batch}, ctx)
        return self.landmarker.postprocess(out, affines)

    def compare(self, a: FaceResult, b: FaceResult, threshold: float | None = None) -> Comparison:
        """Cosine of the embeddings, its calibrated 0..1 similarity and the verdict at ``threshold`` (the
        configured one when None)."""
        cosine = float(np.clip(np.dot(a.embedding, b.embedding), -1.0, 1.0))
        similarity = self.calibration.similarity(cosine)
        t = self.config.threshold if threshold is None else threshold
        result = CompareResult.SAME if similarity >= t else CompareResult.DIFFERENT
        return Comparison(cosine=cosine, similarity=similarity, result=result)


def comparability_issue(a: FaceAnalysis, config: PipelineConfig) -> str | None:
    """Why a found face cannot be compared reliably, or ``None``.

    Turned past ``max_abs_yaw_deg`` the far eye and half the face are hidden and the embedder (trained on
    mostly frontal faces) is unreliable; under ``min_eye_dist_px`` between the eyes too few pixels are left.
    """
    if abs(a.yaw) > config.max_abs_yaw_deg:
        return (f"the head is turned {abs(a.yaw):.0f} degrees (yaw); faces are compared up to "
                f"{config.max_abs_yaw_deg:.0f} degrees")
    if a.eye_dist < config.min_eye_dist_px:
        return (f"the face is too small ({a.eye_dist:.1f} px between the eyes; at least "
                f"{config.min_eye_dist_px:.0f} px needed)")
    return None


def _mesh_roll(mesh: NDF) -> npt.NDArray[np.float64]:
    """In-plane angle (degrees) of the outer eye corners of meshes ``(M, 468, 3)``."""
    d = mesh[:, 263, :2].astype(np.float64) - mesh[:, 33, :2]
    return np.degrees(np.arctan2(d[:, 1], d[:, 0]))


def _choose(dets: list[Detection], size: tuple[int, int], rotation: int) -> Chosen | None:
    """The most prominent of one pass's detections (``size`` is the original image's (h, w)), found on a canvas
    turned clockwise by ``rotation`` degrees."""
    if not dets:
        return None
    det = dets[most_prominent(dets, size)]
    return Chosen(det, len(dets), rotation % 360 if rotation % 90 == 0 else _quarter_turn(det))


def _full_size_choice(c: Chosen, scale: int) -> Chosen:
    """A face chosen in an image decoded at 1/``scale``, in the full-size image's pixels (boxes by their edges,
    points by their pixel centres)."""
    det = c.detection
    full = Detection((det.box * scale).astype(np.float32), ((det.kps + 0.5) * scale - 0.5).astype(np.float32),
                     det.score)
    return Chosen(full, c.faces_found, c.orientation)


def _quarter_turn(det: Detection) -> int:
    """The clockwise quarter turn nearest to levelling the face (from its eye line in the original image)."""
    return round(-eye_angle(det.kps) / 90.0) * 90 % 360


def five_points(pts68: NDF) -> NDF:
    """ArcFace's five points from the 68: eye centres, nose tip, mouth corners -> ``(M, 5, 2)``."""
    return np.stack([
        pts68[:, 36:42, :2].mean(axis=1),
        pts68[:, 42:48, :2].mean(axis=1),
        pts68[:, 30, :2],
        pts68[:, 48, :2],
        pts68[:, 54, :2],
    ], axis=1).astype(np.float32)
