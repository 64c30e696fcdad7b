"""The InferenceBackend protocol and ModelSpec, read from a Triton ``config.pbtxt``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

MODEL_NAMES = ("detector", "landmarker", "embedder")

_TRITON_DTYPES = {
    "TYPE_FP32": np.float32,
    "TYPE_FP16": np.float16,
    "TYPE_INT64": np.int64,
    "TYPE_INT32": np.int32,
    "TYPE_UINT8": np.uint8,
}
NUMPY_TO_TRITON = {np.dtype(v).name: k for k, v in _TRITON_DTYPES.items()}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output: name, numpy dtype name and dims without the batch axis (-1 = dynamic)."""

    name: str
    dtype: str
    dims: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a model takes and returns, as its config.pbtxt declares."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of every output, in declaration order."""
        return tuple(o.name for o in self.outputs)


class InferenceBackend(Protocol):
    """Moves tensors to a model and back; no pre- or post-processing lives here.

    Every input and output has a leading batch axis ``N``.
    """

    async def infer(
        self, model: str, inputs: dict[str, npt.NDArray[np.float32]]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """Run ``model`` on one batch."""
        ...

    def spec(self, model: str) -> ModelSpec:
        """The model's declared inputs and outputs."""
        ...

    async def ready(self) -> bool:
        """True when every model can serve."""
        ...

    @property
    def description(self) -> str:
        """Human-readable name of the backend and device (for logs and /health)."""
        ...

    async def aclose(self) -> None:
        """Release sessions or connections."""
        ...


_BLOCK = re.compile(r"(input|output)\s*\[(.*?)\n\]", re.S)
_ENTRY = re.compile(r"\{(.*?)\}", re.S)


def _field(text: str, key: str) -> str:
    m = re.search(rf"\b{key}\s*:\s*\"?([^\"\n]+)\"?", text)
    if not m:
        raise ValueError(f"config.pbtxt entry lacks {key!r}")
    return m.group(1).strip()


def parse_config(text: str) -> ModelSpec:
    """Parse the subset of Triton's model config text format that facerec writes."""
    name = _field(text, "name")
    max_batch = int(_field(text, "max_batch_size"))
    blocks: dict[str, list[TensorSpec]] = {"input": [], "output": []}
    for kind, body in _BLOCK.findall(text):
        for entry in _ENTRY.findall(body):
            dims_m = re.search(r"dims\s*:\s*\[([^\]]*)\]", entry)
            if not dims_m:
                raise ValueError(f"{name}: tensor without dims")
            dims = tuple(int(d) for d in dims_m.group(1).split(",") if d.strip())
            dtype = np.dtype(_TRITON_DTYPES[_field(entry, "data_type")]).name
            blocks[kind].append(TensorSpec(_field(entry, "name"), dtype, dims))
    return ModelSpec(name, max_batch, tuple(blocks["input"]), tuple(blocks["output"]))


def render_config(spec: ModelSpec, *, preferred_batch_sizes: tuple[int, ...] = (),
                  max_queue_delay_us: int = 2000) -> str:
    """Write a config.pbtxt for the ONNX Runtime backend of Triton."""

    def tensors(items: tuple[TensorSpec, ...]) -> str:
        rows = []
        for t in items:
            dims = ", ".join(str(d) for d in t.dims)
            rows.append(
                f'  {{\n    name: "{t.name}"\n    data_type: {NUMPY_TO_TRITON[t.dtype]}\n    dims: [ {dims} ]\n  }}'
            )
        return ",\n".join(rows)

    preferred = ""
    if preferred_batch_sizes:
        preferred = f"\n  preferred_batch_size: [ {', '.join(map(str, preferred_batch_sizes))} ]"
    return (
        f'name: "{spec.name}"\n'
        f'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {spec.max_batch_size}\n"
        f"input [\n{tensors(spec.inputs)}\n]\n"
        f"output [\n{tensors(spec.outputs)}\n]\n"
        f"dynamic_batching {{{preferred}\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
        f"instance_group [\n  {{\n    kind: KIND_AUTO\n    count: 1\n  }}\n]\n"
    )


def load_spec(repository: Path, model: str) -> ModelSpec:
    """Read ``<repository>/<model>/config.pbtxt``."""
    return parse_config((repository / model / "config.pbtxt").read_text())
