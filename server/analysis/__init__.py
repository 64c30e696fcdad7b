"""Face attributes (pose, eyes, mouth, luminance, occlusion, quality) and similarity-score calibration."""
