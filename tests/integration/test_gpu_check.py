"""``bench/gpu_check.sh --dry-run``: the GPU check's every step (models, raw batches, a 2-worker server under HTTP
and gRPC load, the summary) on CPU with tiny bounds, so the first session with a GPU only has to start it; and the
pure logic of ``bench.gpu_torch`` and ``bench.gpu_check`` (no torch needed)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.gpu_check import host_command
from bench.gpu_torch import compare, faithful, model_input, pair_costs, plan, prepare_onnx, summary_lines
from server.settings import PROJECT_ROOT

# The dry run takes ~60 s on a loaded 2-core machine; its own budget stops every step well before this.
LIMIT_S = 280
EMBEDDER = PROJECT_ROOT / "model_repository" / "embedder" / "1" / "model.onnx"


def test_dry_run_runs_every_step_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=LIMIT_S, check=False)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert [s["batch_pairs"] for s in report["raw"]["steps"]] == [1, 2]
    assert all(s["pairs_per_s"] > 0 for s in report["raw"]["steps"])
    [served] = report["serve"]
    assert served["workers"] == 2 and "error" not in served
    assert served["ready"]["status"] == "ok" and len(served["ready"]["workers"]) == 2
    assert {s["protocol"] for s in served["steps"]} == {"http", "grpc"}
    for step in served["steps"]:
        assert step["ok"] > 0 and not step["errors"], step
    # The torch step ran as a child: measured where torch and onnx2torch are importable, else it says why.
    torch_models = report["torch_models"]
    assert torch_models["device"] == "cpu"
    assert torch_models.get("steps") or torch_models["error"].startswith(("torch not", "onnx2torch not"))
    assert report["host"] is None  # no host step in a dry run
    summary = (out / "gpu_summary.md").read_text()
    assert "## Raw pipeline" in summary and "## Served, 2 workers" in summary and "through PyTorch" in summary
    assert f"results: {out}/gpu_check.json" in proc.stdout + proc.stderr
    assert not report["notes"], report["notes"]
    # What comes back from a device call: plain files directly in the folder (the work folder is gone).
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_summary.md"]


def _tiny_opset21_model() -> onnx.ModelProto:
    """x -> Flatten(x) * Constant(2.5) + 1, declared at opset 21 (Constant and Flatten have opset-21 versions)."""
    nodes = [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([2.5], np.float32), "v")),
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Mul", ["f", "k"], ["m"]),
        helper.make_node("Add", ["m", "one"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
                              [numpy_helper.from_array(np.array([1.0], np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[Any]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(sess.run(None, feeds))


def test_prepare_onnx_turns_constants_into_initializers_and_lowers_the_opset() -> None:
    model = _tiny_opset21_model()
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    (before,) = _run(model, {"x": x})
    changes = prepare_onnx(model)
    assert changes == ["Constant k -> initializer", "opset 21 -> 17"]
    assert [n.op_type for n in model.graph.node] == ["Flatten", "Mul", "Add"]
    assert {i.name for i in model.graph.initializer} == {"one", "k"}
    assert model.opset_import[0].version == 17
    onnx.checker.check_model(model)
    (after,) = _run(model, {"x": x})
    np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(after, x.reshape(2, 6) * 2.5 + 1)
    assert prepare_onnx(model) == []  # nothing left to change


@pytest.mark.skipif(not EMBEDDER.is_file(), reason="no fp32 embedder: run `make models`")
def test_prepared_embedder_computes_the_same_embedding() -> None:
    # What onnx2torch is given for the embedder (declared opset 21) must be the same function: onnxruntime on the
    # prepared graph equals onnxruntime on the file, to the bit, on photo-like inputs.
    model = onnx.load(str(EMBEDDER))
    x = model_input("embedder", 3, [], seed=5)
    (before,) = _run(model, {"data": x})
    changes = prepare_onnx(model)
    assert "opset 21 -> 17" in changes and any(c.startswith("Constant") for c in changes)
    (after,) = _run(model, {"data": x})
    np.testing.assert_array_equal(after, before)


def test_model_input_shapes_and_ranges() -> None:
    photo = np.full((250, 180, 3), 200, np.uint8)
    photo[:, :, 0] = 10  # R low, B high: the detector's canvas is BGR
    det = model_input("detector", 2, [photo], side=320)
    assert det.shape == (2, 3, 320, 320) and det.dtype == np.float32
    assert det[0, 0, 10, 10] == 200 and det[0, 2, 10, 10] == 10  # BGR
    assert det[0, :, :, 240:].max() == 0  # letterboxed: 180/250 of 320 wide, the rest padding
    lmk = model_input("landmarker", 3, [photo])
    assert lmk.shape == (3, 3, 192, 192) and lmk.min() >= 0.0 and lmk.max() <= 1.0
    emb = model_input("embedder", 1, [])
    assert emb.shape == (1, 3, 112, 112) and emb.max() > 1.0  # 0..255, smooth noise without photos


def test_compare_and_faithful() -> None:
    ref = {"score": np.array([[0.1, 0.9]], np.float32), "emb": np.ones((2, 16), np.float32)}
    same = compare(ref, {k: v.copy() for k, v in ref.items()})
    assert same["score"]["max_abs"] == 0 and same["emb"]["cosine_min"] == pytest.approx(1.0)
    assert faithful("embedder", "fp32", same)
    off = compare(ref, {"score": ref["score"] + 0.01, "emb": -ref["emb"]})
    assert off["score"]["rel"] == pytest.approx(0.01, rel=1e-3)  # probabilities: absolute terms
    assert off["emb"]["cosine_min"] == pytest.approx(-1.0)
    assert not faithful("detector", "fp32", off) and faithful("detector", "fp16", {"score": off["score"]})
    assert not faithful("embedder", "fp16", {"emb": off["emb"]})
    assert compare(ref, {"score": ref["score"][:, :1], "emb": ref["emb"]})["score"]["rel"] == float("inf")


def test_pair_costs_use_each_models_best_batch() -> None:
    steps = [
        {"model": "detector", "side": 640, "precision": "fp16", "batch": 1, "ms_p50": 1.0},
        {"model": "detector", "side": 640, "precision": "fp16", "batch": 8, "ms_p50": 4.0},  # 0.5 ms/item: best
        {"model": "landmarker", "side": None, "precision": "fp16", "batch": 16, "ms_p50": 1.6},  # 0.1
        {"model": "embedder", "side": None, "precision": "fp16", "batch": 4, "ms_p50": 0.8},  # 0.2
        {"model": "embedder", "side": None, "precision": "fp16", "batch": 64, "error": "out of memory"},
    ]
    one, three = pair_costs(steps)
    assert one["landmark_passes"] == 1 and one["model_ms_per_pair"] == pytest.approx(2 * (0.5 + 0.1 + 0.2))
    assert three["model_ms_per_pair"] == pytest.approx(2 * (0.5 + 0.3 + 0.2))
    assert three["pairs_per_s"] == pytest.approx(500.0)
    assert one["batches"] == {"detector": 8, "landmarker": 16, "embedder": 4}
    assert pair_costs(steps[:2]) == []  # a model missing: no per-pair figure


def test_plan_runs_small_batches_of_every_model_first() -> None:
    steps = plan(["detector", "embedder"], [1, 64], ["fp32", "fp16"], sides=(320, 640))
    assert len(steps) == 12
    assert {b for _, _, _, b in steps[:6]} == {1} and {b for _, _, _, b in steps[6:]} == {64}
    assert ("detector", 320, "fp16", 1) in steps and ("embedder", None, "fp32", 64) in steps


def test_host_command_follows_the_options_bench_host_has() -> None:
    out, pairs = Path("/o/host.json"), Path("bench/gpu_data/pairs.csv")
    full = "usage: [--only ONLY] [--workers WORKERS] [--lfw-pairs N] [--lfw LFW] [--out OUT]"
    assert host_command(full, "1,2,16", pairs, out) == ["--workers", "1,2,16", "--only", "lfw", "--lfw",
                                                        str(pairs), "--lfw-pairs", "400", "--out", str(out)]
    # --lfw-pairs alone is not --lfw; no --out: the printed table is what comes back.
    assert host_command("[--workers W] [--lfw-pairs N]", "1,2", pairs, out) == ["--workers", "1,2",
                                                                                 "--lfw-pairs", "400"]
    assert host_command("usage: [--processes P]", "1,2", pairs, out) is None
    assert host_command("", "1,2", pairs, out) is None


def test_summary_lines_say_why_nothing_was_measured() -> None:
    text = "\n".join(summary_lines({"device": "cuda", "error": "torch 2.11.0 sees no CUDA device"}))
    assert "not measured: torch 2.11.0 sees no CUDA device" in text
    report = {"device": "cuda", "gpu": "NVIDIA H200", "torch": "2.11.0", "onnx2torch": "1.5.15",
              "conversion": {"embedder": {"ok": True}},
              "validation": [{"model": "embedder", "side": None, "batch": 4, "precision": "fp16", "ok": False,
                              "outputs": {"fc1": {"max_abs": 0.1, "rel": 0.02, "cosine_min": 0.998}}}],
              "steps": [{"model": "embedder", "side": None, "precision": "fp16", "batch": 64, "ms_p50": 0.5,
                         "items_per_s": 128000.0, "host_ms_p50": 1.25}],
              "pair_cost": [], "skipped": [{"model": "embedder"}], "notes": []}
    text = "\n".join(summary_lines(report))
    assert "Models on NVIDIA H200" in text and "| embedder batch 4 | fp16 | 2.00e-02 | 0.998000 | **no** |" in text
    assert "| embedder | fp16 | 64 | 0.500 | 128000 | 1.25 |" in text and "1 timing steps left out" in text
