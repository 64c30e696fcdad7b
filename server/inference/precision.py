"""Which numeric precision the in-process backend runs each model in, and which file of the repository that is.

The model repository keeps Triton's layout: ``<model>/1/model.onnx`` (fp32) is what Triton serves. Models that
``facerec models`` also quantizes get a second file beside it, ``<model>/1/model.int8.onnx``, with the same inputs
and outputs; Triton ignores it, and the onnxruntime backend loads it when the precision is int8.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Literal

from server.settings import Precision

Resolved = Literal["fp32", "int8"]

MODEL_FILES: dict[Resolved, str] = {"fp32": "model.onnx", "int8": "model.int8.onnx"}

# Models built in int8 as well (server/modelrepo/embedder.py). The detector and landmarker stay fp32: the same
# int8 pass made both slower on CPU (small convolutions, so the quantize/dequantize around their float element-wise
# ops costs more than int8 saves; README "Precision") and their outputs (boxes, 468 points) feed every attribute.
INT8_MODELS = frozenset({"embedder"})

# x86 CPU flags of 8-bit dot-product instructions. Without them onnxruntime's u8s8 kernels can saturate
# 16-bit intermediate sums (the reason its docs ask for 7-bit weights there), so "auto" keeps fp32.
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU feature flags Linux reports (``/proc/cpuinfo``); empty where that is not available."""
    if cpuinfo is None:
        if platform.system() != "Linux":
            return frozenset()
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def has_vnni(flags: frozenset[str]) -> bool:
    """True when the CPU has AVX-512 VNNI or AVX-VNNI (int8 dot products into 32-bit sums)."""
    return bool(flags & _VNNI_FLAGS)


def resolve_precision(requested: Precision, *, backend: str, provider: str, vnni: bool) -> Resolved:
    """The precision to run in: ``auto`` means int8 for onnxruntime's CPU provider on a VNNI CPU, else fp32.

    fp32 is kept for CUDA (the int8 file is built for onnxruntime's CPU kernels, whose int8 convolutions use VNNI;
    a GPU embeds in well under a millisecond in fp32) and for Triton (which serves the fp32 repository as is).
    An explicit ``fp32``/``int8`` is honoured.
    """
    if requested != "auto":
        return requested
    if backend == "onnxruntime" and provider == "CPUExecutionProvider" and vnni:
        return "int8"
    return "fp32"


def model_file(repository: Path, model: str, precision: Resolved) -> Path:
    """The file ``model`` runs from at ``precision`` (fp32 for models that have no int8 build)."""
    name = MODEL_FILES[precision] if model in INT8_MODELS else MODEL_FILES["fp32"]
    return repository / model / "1" / name
