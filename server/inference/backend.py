"""The InferenceBackend protocol and ModelSpec (read from a Triton ``config.pbtxt`` by ``model_config``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

MODEL_NAMES = ("detector", "landmarker", "embedder")


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
