"""Triton backend over ``tritonclient.grpc.aio``; Triton's own dynamic batching forms the batches."""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from server.errors import DeadlineExceeded, InferenceFailed, Unavailable
from server.inference.backend import MODEL_NAMES, ModelSpec
from server.inference.model_config import spec_from_config

log = logging.getLogger(__name__)

NDF = npt.NDArray[np.float32]
# gRPC status codes (as tritonclient spells them) meaning "the server is not there now", not "it failed".
_UNAVAILABLE = {"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"}
_DEADLINE = "StatusCode.DEADLINE_EXCEEDED"


def map_error(model: str, exc: InferenceServerException) -> Unavailable | InferenceFailed:
    """The facerec error for a Triton client error; its details go to the log, never to the caller."""
    status = str(exc.status())
    if status == _DEADLINE:
        log.warning("triton %s: deadline exceeded: %s", model, exc.message())
        return DeadlineExceeded("inference deadline exceeded")
    if status in _UNAVAILABLE:
        log.warning("triton %s: unavailable (%s): %s", model, status, exc.message())
        return Unavailable("inference server unavailable")
    log.error("triton %s failed (%s): %s", model, status, exc.message())
    return InferenceFailed(f"{model} inference failed")


class TritonBackend:
    """Sends each batch to a Triton server over gRPC; model specs come from Triton's own model configs."""

    def __init__(self, client: grpcclient.InferenceServerClient, url: str, specs: dict[str, ModelSpec],
                 *, server_version: str = "?", timeout_s: float = 30.0) -> None:
        self._client = client
        self._url = url
        self._specs = specs
        self._timeout_s = timeout_s
        self._description = f"triton {server_version} at {url} (grpc)"

    @classmethod
    async def connect(cls, url: str, models: tuple[str, ...] = MODEL_NAMES,
                      timeout_s: float = 30.0) -> TritonBackend:
        """Open a channel to ``url`` (``host:port``) and read each model's config (Unavailable when down)."""
        client = grpcclient.InferenceServerClient(url)
        try:
            meta = await client.get_server_metadata(as_json=True, client_timeout=timeout_s)
            specs = {}
            for name in models:
                # The protobuf reply (not its JSON rendering) holds the same ModelConfig that config.pbtxt does.
                reply = await client.get_model_config(name, client_timeout=timeout_s)
                specs[name] = spec_from_config(reply.config)
        except ValueError as exc:  # a config this server cannot use (a tensor type facerec does not handle)
            await client.close()
            log.error("triton at %s serves an unusable model config: %s", url, exc)
            raise Unavailable("inference server unavailable") from exc
        except InferenceServerException as exc:
            await client.close()
            err = map_error("connect", exc)
            if isinstance(err, InferenceFailed):  # e.g. a model missing from the server: it cannot serve us
                raise Unavailable("inference server unavailable") from exc
            raise err from exc
        except BaseException:
            await client.close()
            raise
        backend = cls(client, url, specs, server_version=str(meta.get("version", "?")), timeout_s=timeout_s)
        log.info("inference backend: %s", backend.description)
        return backend

    @property
    def description(self) -> str:
        return self._description

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        """The underlying tritonclient (for statistics and tests)."""
        return self._client

    def spec(self, model: str) -> ModelSpec:
        return self._specs[model]

    async def infer(self, model: str, inputs: dict[str, NDF], *,
                    timeout_s: float | None = None) -> dict[str, NDF]:
        """Run one batch; ``timeout_s`` overrides the backend's per-call client timeout."""
        spec = self._specs[model]
        request = []
        for name, array in inputs.items():
            data = np.ascontiguousarray(array)
            tensor = grpcclient.InferInput(name, list(data.shape), np_to_triton_dtype(data.dtype))
            tensor.set_data_from_numpy(data)
            request.append(tensor)
        wanted = [grpcclient.InferRequestedOutput(name) for name in spec.output_names]
        try:
            timeout = self._timeout_s if timeout_s is None else timeout_s
            result = await self._client.infer(model, request, outputs=wanted, client_timeout=timeout)
        except InferenceServerException as exc:
            raise map_error(model, exc) from exc
        outputs: dict[str, NDF] = {}
        for name in spec.output_names:
            value = result.as_numpy(name)
            if value is None:
                log.error("triton %s: response lacks output %s", model, name)
                raise InferenceFailed(f"{model} inference failed")
            outputs[name] = value
        return outputs

    async def ready(self) -> bool:
        """True when the server is live and every model is ready; False (never raises) when unreachable."""
        timeout = min(self._timeout_s, 2.0)
        try:
            if not await self._client.is_server_live(client_timeout=timeout):
                return False
            for name in self._specs:
                if not await self._client.is_model_ready(name, client_timeout=timeout):
                    return False
        except InferenceServerException as exc:
            log.warning("triton at %s not ready: %s", self._url, exc.message())
            return False
        return True

    async def aclose(self) -> None:
        await self._client.close()
