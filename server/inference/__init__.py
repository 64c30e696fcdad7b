"""Inference: backends that move tensors, the dynamic batcher, model wrappers and the face pipeline."""
