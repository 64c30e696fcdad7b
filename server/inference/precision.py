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

# x86 CPU flags of 8-bit dot-product instructions (u8*s8 products summed straight into 32 bits).
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
# Without VNNI, onnxruntime's u8s8 kernels need AVX2 and add pairs of products in 16 bits with saturation:
# exact only when |weight| <= 63 (255*63*2 < 32767; onnxruntime's "reduce_range" remedy). The int8 build uses
# 7-bit weights (server/modelrepo/quantize.py WEIGHT_BITS) and records it in the file's metadata under this key;
# a file without it (built before, with full-range weights) is run on VNNI CPUs only.
WEIGHT_BITS_KEY = "facerec.weight_bits"
SATURATION_FREE_WEIGHT_BITS = 7


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


def has_int8_kernels(flags: frozenset[str]) -> bool:
    """True when onnxruntime's u8s8 kernels run vectorised here: VNNI, or AVX2 (exact with 7-bit weights)."""
    return has_vnni(flags) or "avx2" in flags


def int8_file_is_exact(flags: frozenset[str], weight_bits: int | None) -> bool:
    """Whether onnxruntime's int8 kernels compute an int8 file with ``weight_bits``-bit weights without saturating
    on this CPU (``None``: the file does not say, i.e. full-range weights)."""
    return has_vnni(flags) or (weight_bits is not None and weight_bits <= SATURATION_FREE_WEIGHT_BITS)


def weight_bits(metadata: dict[str, str]) -> int | None:
    """The weight bits an int8 file records in its ONNX metadata, None when absent or unreadable."""
    try:
        return int(metadata[WEIGHT_BITS_KEY])
    except (KeyError, ValueError):
        return None


def resolve_precision(requested: Precision, *, backend: str, provider: str, int8_cpu: bool) -> Resolved:
    """The precision to run in: ``auto`` means int8 for onnxruntime's CPU provider on an x86 CPU with AVX2 or
    VNNI (``int8_cpu``, see ``has_int8_kernels``), else fp32.

    On this project's AVX2-only EPYC the 7-bit int8 embedder needs ~1.4x less CPU per image than fp32 at the same
    lfw-dev accuracy (README "Precision"); on VNNI the earlier 8-bit file measured 1.5-1.8x. fp32 is kept for
    CUDA (the int8 file is built for onnxruntime's CPU kernels; a GPU embeds in well under a millisecond in fp32),
    for Triton (which serves the fp32 repository as is) and for CPUs with neither (e.g. ARM, where this was not
    measured). An explicit ``fp32``/``int8`` is honoured.
    """
    if requested != "auto":
        return requested
    if backend == "onnxruntime" and provider == "CPUExecutionProvider" and int8_cpu:
        return "int8"
    return "fp32"


def model_file(repository: Path, model: str, precision: Resolved) -> Path:
    """The file ``model`` runs from at ``precision`` (fp32 for models that have no int8 build)."""
    name = MODEL_FILES[precision] if model in INT8_MODELS else MODEL_FILES["fp32"]
    return repository / model / "1" / name
