"""Which precision runs where: int8 on onnxruntime's CPU provider of an AVX2/VNNI CPU, fp32 for CUDA and Triton."""

from __future__ import annotations

import asyncio
from pathlib import Path

import onnx
import pytest

from server.errors import Unavailable
from server.inference.onnxrt import OnnxRuntimeBackend
from server.inference.precision import (
    INT8_MODELS,
    MODEL_FILES,
    WEIGHT_BITS_KEY,
    cpu_flags,
    has_int8_kernels,
    has_vnni,
    int8_file_is_exact,
    model_file,
    resolve_precision,
    weight_bits,
)
from server.settings import PROJECT_ROOT, Settings

REPO = PROJECT_ROOT / "model_repository"
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512bw avx512_vnni
bugs\t\t: spectre_v1
"""
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def test_cpu_flags_are_read_from_cpuinfo() -> None:
    flags = cpu_flags(CPUINFO)
    assert {"avx2", "avx512_vnni"} <= flags and "spectre_v1" not in flags
    assert has_vnni(flags)
    assert has_vnni(frozenset({"avx_vnni"}))
    assert not has_vnni(cpu_flags(CPUINFO.replace(" avx512_vnni", "")))
    assert cpu_flags("processor\t: 0\n") == frozenset()


def test_int8_kernels_need_avx2_or_vnni() -> None:
    assert has_int8_kernels(cpu_flags(CPUINFO))
    assert has_int8_kernels(frozenset({"avx", "avx2"}))  # this project's AVX2-only EPYC
    assert not has_int8_kernels(frozenset({"sse4_2", "avx"}))
    assert not has_int8_kernels(frozenset({"fp", "asimd"}))  # ARM: not measured


def test_full_range_weights_are_exact_only_with_vnni() -> None:
    avx2, vnni = frozenset({"avx2"}), frozenset({"avx2", "avx512_vnni"})
    assert int8_file_is_exact(avx2, 7) and int8_file_is_exact(vnni, 7)
    assert not int8_file_is_exact(avx2, 8) and not int8_file_is_exact(avx2, None)  # u8s8 pair sums saturate
    assert int8_file_is_exact(vnni, 8) and int8_file_is_exact(vnni, None)
    assert weight_bits({WEIGHT_BITS_KEY: "7"}) == 7
    assert weight_bits({}) is None and weight_bits({WEIGHT_BITS_KEY: "seven"}) is None


@pytest.mark.parametrize(("requested", "backend", "provider", "int8_cpu", "expected"), [
    ("auto", "onnxruntime", CPU, True, "int8"),      # x86 with AVX2 or VNNI: the CPUs this is for
    ("auto", "onnxruntime", CPU, False, "fp32"),     # neither: not measured
    ("auto", "onnxruntime", CUDA, True, "fp32"),     # GPU: fp32
    ("auto", "triton", CPU, True, "fp32"),           # Triton serves the fp32 repository
    ("fp32", "onnxruntime", CPU, True, "fp32"),      # overrides are honoured both ways
    ("int8", "onnxruntime", CUDA, False, "int8"),
])
def test_resolve_precision(requested: str, backend: str, provider: str, int8_cpu: bool, expected: str) -> None:
    assert resolve_precision(requested, backend=backend, provider=provider,  # type: ignore[arg-type]
                             int8_cpu=int8_cpu) == expected


def test_model_file_falls_back_to_fp32_for_models_without_int8() -> None:
    assert {"embedder"} == INT8_MODELS
    assert model_file(REPO, "embedder", "int8") == REPO / "embedder" / "1" / "model.int8.onnx"
    assert model_file(REPO, "embedder", "fp32") == REPO / "embedder" / "1" / "model.onnx"
    assert model_file(REPO, "detector", "int8") == REPO / "detector" / "1" / "model.onnx"


def test_precision_setting_is_validated() -> None:
    assert Settings().precision == "auto"
    assert Settings.from_env({"FACEREC_PRECISION": "int8"}).precision == "int8"
    with pytest.raises(ValueError, match="FACEREC_PRECISION=fp16: must be one of auto, fp32, int8"):
        Settings.from_env({"FACEREC_PRECISION": "fp16"})
    with pytest.raises(ValueError, match="FACEREC_PRECISION=int8 needs FACEREC_BACKEND=onnxruntime"):
        Settings.from_env({"FACEREC_PRECISION": "int8", "FACEREC_BACKEND": "triton"})
    assert Settings.from_env({"FACEREC_PRECISION": "auto", "FACEREC_BACKEND": "triton"}).backend == "triton"


def _files(precision: str, repo: Path = REPO) -> dict[str, str]:
    backend = OnnxRuntimeBackend(repo, device="cpu", intra_threads=1, precision=precision)  # type: ignore[arg-type]
    try:
        return {m: p.name for m, p in backend.model_files.items()}
    finally:
        asyncio.run(backend.aclose())


@pytest.fixture(scope="module")
def built() -> Path:
    if not all((REPO / "embedder" / "1" / f).is_file() for f in MODEL_FILES.values()):
        pytest.skip("model repository incomplete: run `make models`")
    return REPO


def test_backend_loads_the_file_of_the_precision(built: Path) -> None:
    assert _files("int8") == {"detector": "model.onnx", "landmarker": "model.onnx", "embedder": "model.int8.onnx"}
    assert set(_files("fp32").values()) == {"model.onnx"}
    auto = "int8" if has_int8_kernels(cpu_flags()) else "fp32"
    assert _files("auto")["embedder"] == MODEL_FILES[auto]


def test_built_int8_file_records_its_7_bit_weights(built: Path) -> None:
    meta = {p.key: p.value for p in onnx.load(str(built / "embedder" / "1" / MODEL_FILES["int8"])).metadata_props}
    assert weight_bits(meta) == 7


def _repo_with_full_range_int8(tmp_path: Path) -> Path:
    """The repository as built before 7-bit weights: an int8 file without the weight-bits record."""
    repo = _repo_without_int8(tmp_path)
    model = onnx.load(str(REPO / "embedder" / "1" / MODEL_FILES["int8"]))
    kept = [p for p in model.metadata_props if p.key != WEIGHT_BITS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(repo / "embedder" / "1" / MODEL_FILES["int8"]))
    return repo


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx2"}, "model.onnx"),                       # would saturate: fp32
    ({"avx2", "avx512_vnni"}, "model.int8.onnx"),   # exact on VNNI
])
def test_auto_runs_full_range_int8_only_on_vnni(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 flags: set[str], expected: str) -> None:
    import server.inference.onnxrt as onnxrt

    monkeypatch.setattr(onnxrt, "cpu_flags", lambda: frozenset(flags))
    repo = _repo_with_full_range_int8(tmp_path)
    assert _files("auto", repo)["embedder"] == expected
    assert _files("int8", repo)["embedder"] == "model.int8.onnx"  # an explicit int8 is honoured


def _repo_without_int8(tmp_path: Path) -> Path:
    for model in ("detector", "landmarker", "embedder"):
        (tmp_path / model / "1").mkdir(parents=True)
        (tmp_path / model / "config.pbtxt").symlink_to(REPO / model / "config.pbtxt")
        (tmp_path / model / "1" / "model.onnx").symlink_to(REPO / model / "1" / "model.onnx")
    return tmp_path


def test_auto_runs_fp32_when_the_int8_file_is_missing(built: Path, tmp_path: Path) -> None:
    # A repository built before int8 existed keeps serving (in fp32) rather than failing to start.
    assert _files("auto", _repo_without_int8(tmp_path))["embedder"] == "model.onnx"


def test_explicit_int8_without_the_file_is_unavailable(built: Path, tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match=r"model 'embedder' \(model.int8.onnx\) is missing"):
        _files("int8", _repo_without_int8(tmp_path))


def test_runtime_passes_the_setting_to_the_backend(built: Path) -> None:
    from server.inference.factory import create_backend

    async def files(precision: str) -> str:
        backend = await create_backend(Settings(precision=precision, device="cpu", ort_intra_threads=1))  # type: ignore[arg-type]
        try:
            assert isinstance(backend, OnnxRuntimeBackend)
            return backend.model_files["embedder"].name
        finally:
            await backend.aclose()

    assert asyncio.run(files("fp32")) == "model.onnx"
    assert asyncio.run(files("int8")) == "model.int8.onnx"
