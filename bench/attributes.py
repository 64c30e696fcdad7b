"""Physical consistency of the face attributes over every image of a folder, plus landmark agreement with dlib.

    python -m bench.attributes                                        # ../shared/faces (faceless images skipped)
    python -m bench.attributes --folder ../shared/lfw-dev/lfw --limit 100

Each face image is analysed as is and under known edits, and the attributes must move as physics says:
  rotation by +-15 / +-30 deg (counter-clockwise positive, about the face, on a padded canvas) -> roll moves by
  minus the angle (error = |roll_rot - (roll_padded - angle)|); horizontal flip -> yaw and roll change sign
  (error = |yaw_flip + yaw|, |roll_flip + roll|); halving the pixel values -> face_luminance ratio 0.5;
  covering the lower face (nose tip to chin) with black -> face_occlusion rises; Gaussian blur over the face ->
  face_quality drops. In a photo of several faces, a variant where another face became the most prominent one is
  left out of the errors and counted (``variants_other_face_chosen``).
Landmarks are compared with dlib's 68-point predictor (an independent model, iBUG-300W trained): normalised mean
error = mean point distance / dlib's outer-eye-corner distance, overall, without the jaw (FaceMesh's jaw follows
the face outline differently from iBUG's) and per group.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.common import DEFAULT_FACES, RESULTS, Progress, distribution, folder_images, machine_info, table, write_json
from server.inference.context import INTERNAL
from server.settings import Settings

ANGLES = (-30, -15, 15, 30)
GROUPS = {"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36), "eyes": range(36, 48),
          "mouth": range(48, 68)}


def pad(img: np.ndarray, margin: int) -> np.ndarray:
    return cv2.copyMakeBorder(img, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=(128, 128, 128))


def rotate(img: np.ndarray, centre: tuple[float, float], degrees: float) -> np.ndarray:
    """Counter-clockwise (as displayed) by ``degrees`` about ``centre``, same canvas."""
    m = cv2.getRotationMatrix2D(centre, degrees, 1.0)
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128))


def cover_lower_face(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Black rectangle from the nose tip (point 33) down past the chin (point 8), jaw point 3 to 13 wide."""
    out = img.copy()
    x1, x2 = int(min(pts[3, 0], pts[13, 0])), int(np.ceil(max(pts[3, 0], pts[13, 0])))
    y1 = int(pts[33, 1])
    y2 = int(np.ceil(pts[8, 1] + 0.1 * (pts[8, 1] - pts[33, 1])))
    out[max(y1, 0): max(y2, 0), max(x1, 0): max(x2, 0)] = 0
    return out


def blur_face(img: np.ndarray, box: tuple[int, int, int, int], sigma: float = 6.0) -> np.ndarray:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    xa, ya = max(int(x1 - w / 2), 0), max(int(y1 - h / 2), 0)
    xb, yb = min(int(x2 + w / 2), img.shape[1]), min(int(y2 + h / 2), img.shape[0])
    out = img.copy()
    out[ya:yb, xa:xb] = cv2.GaussianBlur(img[ya:yb, xa:xb], (0, 0), sigma)
    return out


def points(a: Any) -> np.ndarray:
    return np.array([[p.x, p.y] for p in a.landmark_68], dtype=np.float64)


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def dlib_nme(face: Any, img: np.ndarray, ours: np.ndarray, box: tuple[int, int, int, int]) -> dict[str, Any] | None:
    """Normalised mean error of our 68 points against dlib's on the dlib face overlapping ours best."""
    rects = face.detect(img)
    if not rects:
        return None
    best = max(rects, key=lambda r: iou((r.left(), r.top(), r.right(), r.bottom()), box))
    if iou((best.left(), best.top(), best.right(), best.bottom()), box) < 0.2:
        return None
    ref = face.landmarks68(img, best).astype(np.float64)
    iod = float(np.linalg.norm(ref[36] - ref[45]))
    err = np.linalg.norm(ours - ref, axis=1) / iod
    out = {"nme": float(err.mean()), "nme_no_jaw": float(err[17:].mean()), "iod_px": iod}
    out.update({f"nme_{g}": float(err[list(idx)].mean()) for g, idx in GROUPS.items()})
    return out


async def check_images(paths: list[Path], root: Path, settings: Settings, *, with_dlib: bool,
                       progress: bool = True) -> list[dict[str, Any]]:
    from bench.peers import DlibFace
    from bench.raw import RawBench
    from server.inference.decode import decode_image

    dlib_face = DlibFace() if with_dlib else None
    rows: list[dict[str, Any]] = []
    prog = Progress(len(paths), "attributes", enabled=progress)
    async with RawBench(settings) as rb:
        for path in paths:
            name = str(path.relative_to(root))
            img = decode_image(path.read_bytes(), rb.limits)
            (base,) = await rb.pipe.analyze([img], INTERNAL)
            if base is None:
                rows.append({"image": name, "no_face": True})
                prog.update()
                continue
            a = base.analysis
            box = (a.x1, a.y1, a.x2, a.y2)
            margin = max(img.shape[:2]) // 3
            padded = pad(img, margin)
            centre = ((a.x1 + a.x2) / 2 + margin, (a.y1 + a.y2) / 2 + margin)
            variants = {
                "pad": padded,
                **{f"rot{ang}": rotate(padded, centre, ang) for ang in ANGLES},
                "flip": np.ascontiguousarray(img[:, ::-1]),
                "half": (img // 2).astype(np.uint8),
                "cover": cover_lower_face(img, points(a)),
                "blur": blur_face(img, box),
            }
            res = await rb.pipe.analyze(list(variants.values()), INTERNAL)
            v = {k: (r.analysis if r is not None else None) for k, r in zip(variants, res, strict=True)}
            # Where the compared face must be in each variant; in a photo of several faces an edit can make
            # another face the most prominent one, and comparing two different faces says nothing.
            cx, cy = (a.x1 + a.x2) / 2, (a.y1 + a.y2) / 2
            expected = {k: (cx, cy) for k in variants}
            expected["pad"] = (cx + margin, cy + margin)
            for ang in ANGLES:
                m = cv2.getRotationMatrix2D(centre, ang, 1.0)
                expected[f"rot{ang}"] = tuple(m @ np.array([cx + margin, cy + margin, 1.0]))
            expected["flip"] = (img.shape[1] - cx, cy)
            switched = []
            for k, x in v.items():
                if x is not None and np.hypot((x.x1 + x.x2) / 2 - expected[k][0],
                                              (x.y1 + x.y2) / 2 - expected[k][1]) > 0.5 * (a.x2 - a.x1):
                    switched.append(k)
                    v[k] = None
            row: dict[str, Any] = {"image": name, "base": {"roll": a.roll, "yaw": a.yaw, "pitch": a.pitch,
                                                            "luminance": a.face_luminance,
                                                            "occlusion": a.face_occlusion,
                                                            "quality": a.face_quality, "eye_dist": a.eye_dist},
                                   "lost": [k for k, x in v.items() if x is None and k not in switched],
                                   "other_face_chosen": switched}
            if (p := v["pad"]) is not None:
                for ang in ANGLES:
                    if (r := v[f"rot{ang}"]) is not None:
                        row[f"roll_error_rot{ang}"] = abs(r.roll - (p.roll - ang))
            if (f := v["flip"]) is not None:
                row["flip_yaw_error"] = abs(f.yaw + a.yaw)
                row["flip_roll_error"] = abs(f.roll + a.roll)
            if (h := v["half"]) is not None and a.face_luminance > 0:
                row["luminance_ratio_half"] = h.face_luminance / a.face_luminance
            if (c := v["cover"]) is not None:
                row["occlusion_rise_cover"] = c.face_occlusion - a.face_occlusion
            if (b := v["blur"]) is not None:
                row["quality_drop_blur"] = a.face_quality - b.face_quality
            if dlib_face is not None:
                row["dlib"] = dlib_nme(dlib_face, img, points(a), box)
            rows.append(row)
            prog.update()
    prog.close()
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if not r.get("no_face")]

    def col(key: str) -> list[float]:
        return [r[key] for r in ok if key in r]

    roll_15 = col("roll_error_rot-15") + col("roll_error_rot15")
    roll_30 = col("roll_error_rot-30") + col("roll_error_rot30")
    ratio = np.array(col("luminance_ratio_half"))
    rise, drop = np.array(col("occlusion_rise_cover")), np.array(col("quality_drop_blur"))
    dl = [r["dlib"] for r in ok if r.get("dlib")]
    out: dict[str, Any] = {
        "images": len(rows), "no_face": len(rows) - len(ok),
        "variants_lost": sum(len(r["lost"]) for r in ok),
        "variants_other_face_chosen": sum(len(r.get("other_face_chosen", [])) for r in ok),
        "roll_error_deg_rot15": distribution(roll_15), "roll_error_deg_rot30": distribution(roll_30),
        "flip_yaw_error_deg": distribution(col("flip_yaw_error")),
        "flip_roll_error_deg": distribution(col("flip_roll_error")),
        "luminance_ratio_half": distribution(ratio),
        "luminance_ratio_error": distribution(np.abs(ratio - 0.5)),
        "occlusion_rise_cover": {**distribution(rise), "fraction_rising": float((rise > 0).mean()) if rise.size
                                 else None, "min": float(rise.min()) if rise.size else None},
        "quality_drop_blur": {**distribution(drop), "fraction_dropping": float((drop > 0).mean()) if drop.size
                              else None, "min": float(drop.min()) if drop.size else None},
        "dlib_landmarks": {"faces": len(dl), "not_found_by_dlib": len(ok) - len(dl),
                           **{k: distribution([d[k] for d in dl])
                              for k in ("nme", "nme_no_jaw", *(f"nme_{g}" for g in GROUPS))}},
    }
    return out


def summary_table(s: dict[str, Any]) -> str:
    rows = []
    for key, label in (("roll_error_deg_rot15", "roll error, rotation +-15 (deg)"),
                       ("roll_error_deg_rot30", "roll error, rotation +-30 (deg)"),
                       ("flip_yaw_error_deg", "flip: |yaw + yaw'| (deg)"),
                       ("flip_roll_error_deg", "flip: |roll + roll'| (deg)"),
                       ("luminance_ratio_half", "luminance ratio, pixels halved (0.5)"),
                       ("occlusion_rise_cover", "occlusion rise, lower face covered"),
                       ("quality_drop_blur", "quality drop, face blurred")):
        d = s[key]
        rows.append([label, d["n"], d["mean"], d["p50"], d["p90"], d["max"]])
    for key in ("nme", "nme_no_jaw", *(f"nme_{g}" for g in GROUPS)):
        d = s["dlib_landmarks"][key]
        rows.append([f"landmarks vs dlib, {key} (x IOD)", d["n"], d["mean"], d["p50"], d["p90"], d["max"]])
    return table(rows, ["check", "n", "mean", "p50", "p90", "max"])


def run(folder: Path, limit: int | None, *, progress: bool = True) -> dict[str, Any]:
    from bench.peers import dlib_unavailable

    paths = folder_images(folder, recursive=True, limit=limit)
    why = dlib_unavailable()
    if why:
        print(f"dlib landmark comparison skipped: {why}", file=sys.stderr)
    rows = asyncio.run(check_images(paths, folder, Settings.from_env(), with_dlib=why is None, progress=progress))
    return {"folder": str(folder), "dlib_skipped": why, "summary": summarize(rows), "images": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.attributes", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--folder", type=Path, default=DEFAULT_FACES, help="images (searched recursively)")
    ap.add_argument("--limit", type=int, help="first N images (sorted)")
    ap.add_argument("--out", type=Path, default=RESULTS / "attributes.json")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    rep = run(args.folder, args.limit, progress=not args.no_progress)
    print(summary_table(rep["summary"]))
    write_json(args.out, {"machine": machine_info(), **rep})
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
