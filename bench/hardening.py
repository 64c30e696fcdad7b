"""What hostile or worst-case clients cost a real ``facerec serve`` (loopback only): memory and CPU, not speed.

    python -m bench.hardening                          # every scenario, default settings
    python -m bench.hardening --only memory,grpc       # some of: header put memory grpc decode
    python -m bench.hardening --project-root ../old --label before    # the same against another checkout

Scenarios (each starts its own server with the default settings and a temporary data directory):

- **header**: one unauthenticated request whose header block is 64 MB: bytes the client got to send before the
  server answered, the answer, and the server's CPU seconds for it.
- **put**: 4 unauthenticated PUTs of an 11 MB JSON body with 1M keys: answers and server CPU seconds.
- **memory**: 16 concurrent compares of 40 MP images (solid-colour PNGs and noisy 6 MB JPEGs, half each), then 16
  of 40 MP RGBA PNGs (the costliest decode): every status, and the server's peak resident memory (VmHWM).
- **grpc**: 16 concurrent unauthenticated ``CompareFaces`` calls of 24 MB each: resident memory before and after,
  and the codes.
- **decode**: the decoder's peak memory per 40 MP image kind (one subprocess each) against the estimate the
  decode memory budget uses.

Results: ``bench/results/hardening[_<label>].json``. Memory and CPU seconds do not depend on how loaded the machine
is (wall times are not reported for that reason); the machine load is recorded anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, ROOT, cpu_seconds, machine_info, table, write_json
from tooling.serve import ServeProcess

SCENARIOS = ("header", "put", "memory", "grpc", "decode")
MIB = 2**20
W, H = 7300, 5470  # 39.9 MP, just under the default FACEREC_MAX_IMAGE_PIXELS


# ----------------------------------------------------------------------------------------------- the server


@dataclass
class Server:
    proc: ServeProcess

    @property
    def port(self) -> int:
        return self.proc.port

    @property
    def grpc_port(self) -> int:
        return self.proc.grpc_port

    def token(self) -> str:
        return self.proc.token("bench")

    def status(self, key: str) -> int:
        assert self.proc.proc is not None
        for line in Path(f"/proc/{self.proc.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def alive(self) -> bool:
        return self.proc.proc is not None and self.proc.proc.poll() is None

    def cpu(self) -> float:
        assert self.proc.proc is not None
        value = cpu_seconds(self.proc.proc.pid)
        assert value is not None
        return value


@contextlib.contextmanager
def serve(root: Path, **env: str) -> Iterator[Server]:
    """``facerec serve`` of ``root`` (this checkout or another one, for before/after numbers), default settings
    plus ``env``, this checkout's models; ready once ``/health/ready`` answers."""
    full_env = {"FACEREC_MODEL_REPOSITORY": str(ROOT / "model_repository"), **env}
    # One process here; another checkout (a before/after run) may predate --workers: pass no flag to it.
    workers = 1 if root == ROOT else None
    with ServeProcess(env=full_env, ready_path="/health/ready", project_root=root, workers=workers) as proc:
        yield Server(proc)


def _warm(server: Server, token: str) -> None:
    """One real compare, so models and thread pools are up before anything is measured."""
    import httpx

    faces = ROOT.parent / "shared" / "faces"
    photos = sorted(p for p in faces.glob("*.jpg") if not p.name.startswith("no_face"))[:2]
    if len(photos) < 2:
        return
    httpx.post(f"http://127.0.0.1:{server.port}/v1/compare_face", headers={"Authorization": f"Bearer {token}"},
               data={"channel": "WEB", "reference": "warm"},
               files={"file1": ("a.jpg", photos[0].read_bytes()), "file2": ("b.jpg", photos[1].read_bytes())},
               timeout=120)


# ----------------------------------------------------------------------------------------------- scenarios


def scenario_header(root: Path) -> dict[str, Any]:
    with serve(root) as server:
        cpu0 = server.cpu()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=120)
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        piece, total, sent = b"a" * 65536, 64 * MIB, 0
        try:
            while sent < total:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:  # answered (or closed) before the header block ended
                    break
                sock.sendall(piece)
                sent += len(piece)
            else:
                sock.sendall(b"\r\n\r\n")
            answer = sock.recv(4096)
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            answer = b""
        finally:
            sock.close()
        time.sleep(0.5)
        return {"header_bytes_sent_before_answer": sent,
                "answer": answer.split(b"\r\n", 1)[0].decode(errors="replace"),
                "server_cpu_s": round(server.cpu() - cpu0, 3)}


def scenario_put(root: Path) -> dict[str, Any]:
    import httpx

    body = b"{" + b",".join(b'"k%d":1' % i for i in range(1_000_000)) + b"}"
    with serve(root) as server:
        cpu0 = server.cpu()
        url = f"http://127.0.0.1:{server.port}/v1/face-recognition/8c5b2a52-4a51-4f7e-9d7c-6d1f3d1f0b3e"
        statuses = []
        for _ in range(4):
            try:
                statuses.append(httpx.put(url, content=body, headers={"content-type": "application/json"},
                                          timeout=120).status_code)
            except httpx.HTTPError as exc:
                statuses.append(type(exc).__name__)
        return {"body_bytes": len(body), "statuses": statuses, "server_cpu_s_per_request":
                round((server.cpu() - cpu0) / 4, 3)}


def _images() -> dict[str, bytes]:
    from PIL import Image

    out: dict[str, bytes] = {}
    for name, img, fmt in (("png", Image.new("RGB", (W, H), (200, 150, 120)), "PNG"),
                           ("rgba", Image.new("RGBA", (W, H), (200, 150, 120, 255)), "PNG")):
        buf = io.BytesIO()
        img.save(buf, fmt)
        out[name] = buf.getvalue()
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (H // 8, W // 8, 3), dtype=np.uint8)).resize((W, H))
    buf = io.BytesIO()
    noise.save(buf, "JPEG", quality=60)
    out["jpeg"] = buf.getvalue()
    return out


async def _compares(server: Server, token: str, kinds: list[str], images: dict[str, bytes]) -> list[int | str]:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=180) as client:
        async def one(kind: str) -> int | str:
            try:
                resp = await client.post("/v1/compare_face", headers={"Authorization": f"Bearer {token}"},
                                         data={"channel": "WEB", "reference": kind},
                                         files={"file1": ("a", images[kind]), "file2": ("b", images[kind])})
            except httpx.HTTPError as exc:
                return type(exc).__name__
            return resp.status_code

        return list(await asyncio.gather(*(one(k) for k in kinds)))


MEMORY_SETS = {"png_and_jpeg": ["png" if i % 2 else "jpeg" for i in range(16)], "rgba": ["rgba"] * 16}


def scenario_memory(root: Path, sets: list[str]) -> dict[str, Any]:
    images = _images()
    runs: dict[str, Any] = {"image_bytes": {k: len(v) for k, v in images.items()}}
    for name in sets:
        kinds = MEMORY_SETS[name]
        with serve(root) as server:
            token = server.token()
            _warm(server, token)
            warm_rss = server.status("VmRSS")
            statuses = asyncio.run(_compares(server, token, kinds, images))
            runs[name] = {"statuses": statuses, "peak_rss_mib": round(server.status("VmHWM") / MIB),
                          "rss_after_warmup_mib": round(warm_rss / MIB), "server_alive": server.alive()}
    return runs


def scenario_grpc(root: Path) -> dict[str, Any]:
    import grpc

    from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb

    file = b"\0" * (12 * MIB - 1024)
    message = pb.CompareFacesRequest(channel="WEB", reference="x", file1=file, file2=file).SerializeToString()

    async def calls(target: str) -> list[str]:
        async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 * MIB)]) as ch:
            call = ch.unary_unary("/facerec.v1.FaceRecognition/CompareFaces", request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)

            async def one(i: int) -> str:
                try:
                    await call(message, metadata=(("authorization", f"Bearer forged.{i}.x"),), timeout=120)
                except grpc.aio.AioRpcError as err:
                    return err.code().name
                return "OK"

            return list(await asyncio.gather(*(one(i) for i in range(16))))

    with serve(root) as server:
        token = server.token()
        _warm(server, token)
        before, hwm_before = server.status("VmRSS"), server.status("VmHWM")
        codes = asyncio.run(calls(f"127.0.0.1:{server.grpc_port}"))
        time.sleep(1.0)
        after, hwm_after = server.status("VmRSS"), server.status("VmHWM")
    return {"message_bytes": len(message), "codes": sorted(set(codes)), "rss_before_mib": round(before / MIB),
            "rss_after_mib": round(after / MIB), "rss_added_mib": round((after - before) / MIB),
            "peak_added_mib": round((hwm_after - hwm_before) / MIB)}


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
_DECODE_PROBE = """
import sys
from server.inference.decode import DecodeLimits, decode_cost, decode_image, read_header
def hwm():
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
data = open(sys.argv[1], "rb").read()
limits = DecodeLimits()
peak, kept = decode_cost(read_header(data, limits))
before = hwm()
decode_image(data, limits)
print(peak, hwm() - before)
"""


def scenario_decode(root: Path) -> dict[str, Any]:
    from PIL import Image

    kinds: dict[str, tuple[Any, str, dict[str, Any]]] = {
        "rgb.png": (Image.new("RGB", (W, H), (200, 150, 120)), "PNG", {}),
        "rgba.png": (Image.new("RGBA", (W, H), (200, 150, 120, 255)), "PNG", {}),
        "l.png": (Image.new("L", (W, H), 128), "PNG", {}),
        "p-transparent.png": (Image.new("P", (W, H), 3), "PNG", {"transparency": 3}),
        "rgb.jpg": (Image.new("RGB", (W, H), (200, 150, 120)), "JPEG", {"quality": 90}),
        "cmyk.jpg": (Image.new("CMYK", (W, H), (20, 50, 70, 0)), "JPEG", {}),
        "rgb.webp": (Image.new("RGB", (W, H), (200, 150, 120)), "WEBP", {"quality": 50}),
    }
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (img, fmt, kw) in kinds.items():
            path = Path(tmp) / name
            img.save(path, fmt, **kw)
            proc = subprocess.run([sys.executable, "-c", _DECODE_PROBE, str(path)], cwd=root, capture_output=True,
                                  text=True, check=True)
            estimate, measured = (int(v) for v in proc.stdout.split())
            out[name] = {"estimate_mib": round(estimate / MIB), "measured_peak_mib": round(measured / MIB),
                         "estimate_covers": estimate >= measured}
    return out


RUNNERS = {"header": scenario_header, "put": scenario_put, "grpc": scenario_grpc, "decode": scenario_decode}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hardening", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--project-root", type=Path, default=ROOT, help="checkout whose server to run (default: this)")
    p.add_argument("--label", default="", help="suffix of the results file (e.g. before)")
    p.add_argument("--memory-sets", default=",".join(MEMORY_SETS),
                   help=f"image sets of the memory scenario: {','.join(MEMORY_SETS)} (an unbounded server may need "
                   "several GB for rgba)")
    args = p.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}")
    results: dict[str, Any] = {"machine": machine_info(), "load_average": os.getloadavg(),
                               "project_root": str(args.project_root.resolve())}
    for name in wanted:
        print(f"--- {name}", flush=True)
        root = args.project_root.resolve()
        if name == "memory":
            results[name] = scenario_memory(root, [x for x in args.memory_sets.split(",") if x])
        else:
            results[name] = RUNNERS[name](root)
        print(json.dumps(results[name], indent=1), flush=True)
    results["load_average_after"] = os.getloadavg()
    path = write_json(RESULTS / f"hardening{'_' + args.label if args.label else ''}.json", results)
    if "memory" in results:
        rows = [[k, v["peak_rss_mib"], v["rss_after_warmup_mib"], " ".join(sorted({str(s) for s in v["statuses"]}))]
                for k, v in results["memory"].items() if isinstance(v, dict) and "statuses" in v]
        print(table(rows, ["16 compares of", "peak RSS MiB", "after warm-up MiB", "statuses"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
