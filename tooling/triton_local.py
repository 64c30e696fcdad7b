"""A local CPU Triton server (pytriton's bundled binary; Python backend running onnxruntime) for tests and bench."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from server.inference.backend import MODEL_NAMES, ModelSpec
from server.inference.model_config import CONFIG_NAME, TritonServing, load_spec, python_config, render_config
from tooling.serve import free_port

PY_TAG = f"{sys.version_info.major}.{sys.version_info.minor}"

# The generated model.py. The Python backend stub embeds its own interpreter and ignores PYTHONPATH, so the
# file itself puts this environment's site-packages on sys.path before importing numpy/onnxruntime.
MODEL_PY = '''"""facerec: Triton Python-backend model running onnxruntime on one ONNX file (generated)."""

import sys

for _p in reversed({site_packages!r}):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2


class TritonPythonModel:
    def initialize(self, args):
        # Triton hands the config over as JSON; read it into the same ModelConfig message as config.pbtxt.
        config = json_format.Parse(args["model_config"], model_config_pb2.ModelConfig(),
                                   ignore_unknown_fields=True)
        params = {{k: v.string_value for k, v in config.parameters.items()}}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(params["onnx_path"], sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in config.input]
        self.output_names = [o.name for o in config.output]

    def execute(self, requests):
        # Through DLPack both ways: the bundled stub was built against numpy 1.x, and under numpy 2 its
        # as_numpy() and Tensor(name, array) exchange the right shapes with wrong or missing data.
        feeds = [{{n: np.from_dlpack(pb_utils.get_input_tensor_by_name(r, n)) for n in self.input_names}}
                 for r in requests]
        responses = [None] * len(requests)
        # Requests Triton batched together run as one session call; only same-shaped ones can be stacked
        # (the detector accepts any H, W).
        groups = {{}}
        for k, feed in enumerate(feeds):
            key = tuple(feed[n].shape[1:] for n in self.input_names)
            groups.setdefault(key, []).append(k)
        for members in groups.values():
            try:
                batch = {{n: np.concatenate([feeds[k][n] for k in members]) for n in self.input_names}}
                outs = self.session.run(self.output_names, batch)
            except Exception as exc:  # any onnxruntime failure becomes an error response, not a crash
                for k in members:
                    responses[k] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                continue
            start = 0
            for k in members:
                n = len(feeds[k][self.input_names[0]])
                tensors = [pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(out[start:start + n]))
                           for name, out in zip(self.output_names, outs)]
                responses[k] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += n
        return responses

    def finalize(self):
        self.session = None
'''


class TritonUnavailableError(RuntimeError):
    """The local Triton server cannot run here (binary missing or failed to start); the message says why."""


@dataclass(frozen=True, slots=True)
class TritonBinary:
    """Where pytriton's bundled server, Python backend and stub live."""

    server: Path
    backend_dir: Path
    stub: Path
    libs: Path


def find_binary() -> TritonBinary:
    """Locate the tritonserver binary bundled with ``nvidia-pytriton``; raise with the reason when absent."""
    # Located, not imported: only its files are used, and importing it pulls in its whole runtime.
    found_spec = importlib.util.find_spec("pytriton")
    if found_spec is None or not found_spec.submodule_search_locations:
        raise TritonUnavailableError("nvidia-pytriton is not installed")
    root = Path(next(iter(found_spec.submodule_search_locations))).resolve() / "tritonserver"
    found = TritonBinary(
        server=root / "bin" / "tritonserver",
        backend_dir=root / "backends" / "python",
        stub=root / "python_backend_stubs" / PY_TAG / "triton_python_backend_stub",
        libs=root.parent.parent / "nvidia_pytriton.libs",
    )
    for path in (found.server, found.backend_dir / "libtriton_python.so", found.stub):
        if not path.exists():
            raise TritonUnavailableError(f"pytriton's bundle lacks {path}")
    if not sys.platform.startswith("linux"):
        raise TritonUnavailableError(f"the bundled tritonserver runs on Linux only, not {sys.platform}")
    return found


@dataclass(frozen=True, slots=True)
class Batching:
    """One model's dynamic batching in Triton: batches of a preferred size go at once, others wait up to the
    delay for company."""

    max_queue_delay_us: int = 2000
    preferred_batch_sizes: tuple[int, ...] = ()


def render_python_config(spec: ModelSpec, onnx_path: Path, *, max_queue_delay_us: int = 2000,
                         intra_op_threads: int = 0, preferred_batch_sizes: tuple[int, ...] = ()) -> str:
    """config.pbtxt of a Python-backend model: ``spec``'s tensors, one CPU instance, and the dynamic batching,
    queue policy and warm-up of the production config (server/inference/model_config.py ``TritonServing``), so
    the local server queues and warms models the way a deployed one does."""
    parameters = {"onnx_path": str(onnx_path.resolve()), "intra_op_threads": str(intra_op_threads)}
    serving = TritonServing(max_queue_delay_us=max_queue_delay_us, preferred_batch_sizes=preferred_batch_sizes)
    return render_config(python_config(spec, parameters, serving))


def render_model_py(site_packages: list[str]) -> str:
    """The generated model.py, with ``site_packages`` put first on the stub's sys.path."""
    return MODEL_PY.format(site_packages=site_packages)


def site_packages() -> list[str]:
    """This interpreter's site-packages (purelib and platlib, without duplicates)."""
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return list(dict.fromkeys(paths))


def build_python_repository(source: Path, target: Path, *, models: tuple[str, ...] = MODEL_NAMES,
                            max_queue_delay_us: int = 2000, intra_op_threads: int = 0,
                            batching: Mapping[str, Batching] | None = None) -> None:
    """Write ``target/<model>/{config.pbtxt,1/model.py}`` serving ``source/<model>/1/model.onnx`` in place.

    ``batching`` overrides the dynamic batching of some models (the others wait ``max_queue_delay_us``).
    """
    model_py = render_model_py(site_packages())
    for name in models:
        onnx = source / name / "1" / "model.onnx"
        if not onnx.is_file():
            raise TritonUnavailableError(f"{onnx} is missing: run `facerec models` (make models)")
        b = (batching or {}).get(name, Batching(max_queue_delay_us))
        (target / name / "1").mkdir(parents=True, exist_ok=True)
        (target / name / CONFIG_NAME).write_text(
            render_python_config(load_spec(source, name), onnx, max_queue_delay_us=b.max_queue_delay_us,
                                 intra_op_threads=intra_op_threads, preferred_batch_sizes=b.preferred_batch_sizes))
        (target / name / "1" / "model.py").write_text(model_py)


class LocalTriton:
    """Runs tritonserver on 127.0.0.1 serving the ONNX models of ``repository`` through the Python backend.

    Use as a context manager (or :meth:`start` / :meth:`stop`). Raises :class:`TritonUnavailableError` with
    the reason and the tail of the server log when it cannot start.
    """

    def __init__(self, repository: Path, *, models: tuple[str, ...] = MODEL_NAMES,
                 max_queue_delay_us: int = 2000, intra_op_threads: int = 0,
                 start_timeout_s: float = 60.0, batching: Mapping[str, Batching] | None = None) -> None:
        self.repository = repository
        self.models = models
        self.max_queue_delay_us = max_queue_delay_us
        self.batching = dict(batching or {})
        self.intra_op_threads = intra_op_threads
        self.start_timeout_s = start_timeout_s
        self.grpc_port = self.http_port = self.metrics_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.log_path: Path | None = None

    @property
    def grpc_url(self) -> str:
        """``host:port`` for tritonclient.grpc."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """``http://host:port`` of Triton's HTTP/REST endpoint."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server log."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self, *, keep_ports: bool = False) -> LocalTriton:
        """Build the repository, start the server and wait (bounded) until every model is ready.

        ``keep_ports`` restarts a stopped or killed server on its previous ports, as a restarted Triton pod
        behind the same Service address would come back (clients reconnect to the same URL).
        """
        binary = find_binary()
        if self._tmp is not None:  # a killed server's files
            self._tmp.cleanup()
        self._tmp = tempfile.TemporaryDirectory(prefix="facerec-triton-")
        work = Path(self._tmp.name)
        repo, backends = work / "models", work / "backends"
        build_python_repository(self.repository, repo, models=self.models,
                                max_queue_delay_us=self.max_queue_delay_us,
                                intra_op_threads=self.intra_op_threads, batching=self.batching)
        # The Python backend looks for its stub beside libtriton_python.so; pytriton ships the stubs apart.
        shutil.copytree(binary.backend_dir, backends / "python")
        shutil.copy2(binary.stub, backends / "python" / "triton_python_backend_stub")
        if not (keep_ports and self.grpc_port):
            self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log_path = work / "tritonserver.log"
        env = dict(os.environ)
        libs = [str(binary.libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
        cmd = [
            str(binary.server), f"--model-repository={repo}", f"--backend-directory={backends}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false", "--exit-timeout-secs=5", "--log-verbose=0",
        ]
        with self.log_path.open("wb") as log:
            # A new session so stop() can end the server together with its Python-backend stub processes.
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise TritonUnavailableError(f"tritonserver exited with {code}:\n{self.log_tail()}")
            if self.models_ready():
                return
            time.sleep(0.2)  # a child process's start-up has no event to wait on; poll its health endpoint
        raise TritonUnavailableError(
            f"tritonserver not ready within {self.start_timeout_s:.0f} s:\n{self.log_tail()}")

    def model_stats(self, model: str) -> dict[str, int]:
        """Triton's own counters of ``model``: ``requests`` (successful inference requests), ``inferences``
        (rows) and ``executions`` (batches run), from its statistics extension."""
        with urllib.request.urlopen(f"{self.http_url}/v2/models/{model}/stats", timeout=5.0) as r:
            entry = json.loads(r.read())["model_stats"][0]
        return {"requests": int(entry["inference_stats"]["success"]["count"]),
                "inferences": int(entry.get("inference_count", 0)),
                "executions": int(entry.get("execution_count", 0))}

    def models_ready(self) -> bool:
        """True when the server answers and every model is ready (HTTP health API)."""
        for name in self.models:
            try:
                with urllib.request.urlopen(f"{self.http_url}/v2/models/{name}/ready", timeout=1.0) as r:
                    if r.status != 200:
                        return False
            except (urllib.error.URLError, OSError):
                return False
        return True

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL to its process group), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the server (then kill it if it lingers) and remove its files."""
        proc = self.process
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            # Stub processes share the group; make sure none outlives the server.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
