"""Backend-agnostic pre- and post-processing for the detector, landmarker and embedder models."""
