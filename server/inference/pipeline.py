"""The face pipeline: detect -> pick a face -> landmarks (two passes) -> 68 points -> align -> embed -> attributes.

Every stage works on a batch; CPU-bound pre/post-processing runs off the event loop, model calls go through an
``InferenceRunner`` (the per-model dynamic batchers in front of a backend, or the backend directly) together with
the request's context (transport label, deadline), passed explicitly.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from server.analysis.attributes import FaceGeometry, analyze_faces
from server.analysis.calibration import ScoreCalibration
from server.domain import CompareResult, Comparison, FaceAnalysis
from server.inference.backend import ModelSpec
from server.inference.context import RequestContext
from server.inference.models.detector import Detection, Detector, most_prominent
from server.inference.models.embedder import Embedder
from server.inference.models.landmarker import Landmarker
from server.inference.models.mesh68 import mesh_to_68

NDF = npt.NDArray[np.float32]

# The most rows one image can have queued at one model at a time (today 1: one detection, one mesh pass, one
# embedding at a time; 2 with flip_embedding). The runtime sizes the batchers' safety bound from it, with headroom:
# raise it when a stage submits more rows per image (e.g. extra detector passes).
MAX_ROWS_PER_IMAGE = 2


class InferenceRunner(Protocol):
    """Anything that runs one batch through a named model for a request (batchers in front of a backend, or a
    backend directly through ``DirectRunner``)."""

    async def infer(self, model: str, inputs: dict[str, NDF], ctx: RequestContext) -> dict[str, NDF]:
        """Run ``model`` on a batch on behalf of the request ``ctx``."""
        ...


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Knobs of the pipeline (taken from Settings by the runtime)."""

    detector_size: int = 640
    detector_score_threshold: float = 0.75
    min_face_px: int = 24
    refine_landmarks: bool = True  # re-run FaceMesh on ROIs re-centred and re-levelled from the previous mesh
    # YuNet's eye points under-read roll (about 9 deg for a 30 deg tilt) and each FaceMesh pass closes only about
    # half of the remaining tilt, so one refinement leaves up to ~6 deg of roll error at 30 deg; two leave < 1 deg.
    refine_passes: int = 2
    align_on_mesh: bool = True  # 5 alignment points from the mesh (finer) rather than the detector's keypoints
    flip_embedding: bool = False  # sum with the mirror image's embedding: no gain on LFW-dev, twice the cost
    threshold: float = 0.5


@dataclass(frozen=True, slots=True)
class FaceResult:
    """One analysed face: the API's analysis plus the embedding (kept in memory only, never stored)."""

    analysis: FaceAnalysis
    embedding: NDF  # (128,) L2-normalised


class FacePipeline:
    """Batch-first face analysis and comparison over any inference runner."""

    def __init__(self, runner: InferenceRunner, specs: dict[str, ModelSpec], config: PipelineConfig,
                 calibration: ScoreCalibration | None = None) -> None:
        self.runner = runner
        self.config = config
        self.detector = Detector(config.detector_size, config.detector_score_threshold,
                                 min_face_px=config.min_face_px)
        self.landmarker = Landmarker(specs["landmarker"])
        self.embedder = Embedder(specs["embedder"])
        self.calibration = calibration or ScoreCalibration()

    async def detect(self, images: list[npt.NDArray[np.uint8]], ctx: RequestContext) -> list[list[Detection]]:
        """All faces per image, best score first."""
        batch, scales = await asyncio.to_thread(self.detector.preprocess, images)
        out = await self.runner.infer(self.detector.name, {"input": batch}, ctx)
        sizes = [img.shape[:2] for img in images]
        return await asyncio.to_thread(self.detector.postprocess, out, scales, sizes)

    async def analyze(self, images: list[npt.NDArray[np.uint8]], ctx: RequestContext) -> list[FaceResult | None]:
        """Analyse the most prominent face of each RGB image; ``None`` where no face was found."""
        all_dets = await self.detect(images, ctx)
        chosen: list[tuple[int, Detection, int]] = []
        for i, dets in enumerate(all_dets):
            if dets:
                chosen.append((i, dets[most_prominent(dets, images[i].shape[:2])], len(dets)))
        results: list[FaceResult | None] = [None] * len(images)
        if not chosen:
            return results
        index = np.array([c[0] for c in chosen], dtype=np.intp)
        boxes = np.stack([c[1].box for c in chosen])
        kps = np.stack([c[1].kps for c in chosen])

        affines = Landmarker.rois(boxes, kps[:, :2])
        mesh, presence = await self._mesh(images, index, affines, ctx)
        for _ in range(self.config.refine_passes if self.config.refine_landmarks else 0):
            mesh, presence = await self._mesh(images, index, Landmarker.rois_from_mesh(mesh), ctx)
        pts68 = mesh_to_68(mesh)

        points5 = five_points(pts68) if self.config.align_on_mesh else kps
        crops = await asyncio.to_thread(Embedder.align, images, index, points5)
        flip = self.config.flip_embedding
        emb_in = await asyncio.to_thread(Embedder.preprocess, crops, flip=flip)
        emb_out = await self.runner.infer(self.embedder.name, {self.embedder.input_name: emb_in}, ctx)
        embeddings = self.embedder.postprocess(emb_out, flip=flip)

        geoms = [
            FaceGeometry(box=c[1].box, kps=c[1].kps, score=c[1].score, faces_found=c[2], mesh=mesh[m],
                         points68=pts68[m], presence=float(presence[m]))
            for m, c in enumerate(chosen)
        ]
        analyses = await asyncio.to_thread(analyze_faces, images, index, geoms, crops)
        for m, (i, _, _) in enumerate(chosen):
            results[i] = FaceResult(analyses[m], embeddings[m])
        return results

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


def five_points(pts68: NDF) -> NDF:
    """ArcFace's five points from the 68: eye centres, nose tip, mouth corners -> ``(M, 5, 2)``."""
    return np.stack([
        pts68[:, 36:42, :2].mean(axis=1),
        pts68[:, 42:48, :2].mean(axis=1),
        pts68[:, 30, :2],
        pts68[:, 48, :2],
        pts68[:, 54, :2],
    ], axis=1).astype(np.float32)
