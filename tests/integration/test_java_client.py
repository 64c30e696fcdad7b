"""A Java client compiled against the proto (java_package dev.facerec.v1) and grpc-java calls the real server.

The toolchain comes from Debian (Maven Central is not reachable here): protoc 3.21, the grpc-java protoc plugin,
grpc-java 1.41, protobuf-java 3.21 and netty jars, installed by this set-up with apt when missing (as root), and
the machine's JDK. Without them the tests skip saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import PAIR

from tooling.serve import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "clients" / "java" / "src" / "main" / "java" / "dev" / "facerec" / "example" / "CompareExample.java"
JARS = Path("/usr/share/java")
APT_PACKAGES = ("protobuf-compiler", "protobuf-compiler-grpc-java-plugin", "libgrpc-java", "libprotobuf-java",
                "libnetty-java", "libperfmark-java", "libgeronimo-annotation-1.3-spec-java")
COMPILE_JARS = ("protobuf", "grpc-api", "grpc-stub", "grpc-protobuf", "grpc-protobuf-lite", "grpc-core",
                "grpc-context", "guava", "jsr305", "error_prone_annotations", "geronimo-annotation-1.3-spec")
RUN_JARS = (*COMPILE_JARS, "grpc-netty", "perfmark-api", "netty-transport", "netty-buffer", "netty-codec",
            "netty-codec-http", "netty-codec-http2", "netty-common", "netty-handler", "netty-resolver")
PLUGIN = Path("/usr/bin/grpc_java_plugin")
PROTOC = Path("/usr/bin/protoc")  # Debian's 3.21: its Java output matches protobuf-java 3.21


def _missing() -> list[str]:
    missing = [str(p) for p in (PROTOC, PLUGIN) if not p.exists()]
    return missing + [j for j in RUN_JARS if not (JARS / f"{j}.jar").exists()]


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("no JDK (javac/java) on this machine")
    if _missing() and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES], capture_output=True,
                       timeout=900, check=False, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if _missing():
        pytest.skip(f"Debian's grpc-java toolchain is missing and could not be installed: {_missing()[:5]}")
    tmp = tmp_path_factory.mktemp("java")
    gen, out = tmp / "gen", tmp / "classes"
    gen.mkdir()
    out.mkdir()
    subprocess.run([str(PROTOC), f"-I{ROOT / 'proto'}", f"--java_out={gen}",
                    f"--plugin=protoc-gen-grpc-java={PLUGIN}", f"--grpc-java_out={gen}",
                    "facerec/v1/face_recognition.proto"], check=True, capture_output=True, timeout=120)
    sources = [str(p) for p in gen.rglob("*.java")]
    # java_multiple_files: one class per message, in the java_package.
    assert (gen / "dev" / "facerec" / "v1" / "CompareFacesRequest.java").is_file()
    assert (gen / "dev" / "facerec" / "v1" / "FaceRecognitionGrpc.java").is_file()
    proc = subprocess.run(["javac", "-d", str(out), "-cp", _classpath(COMPILE_JARS), *sources, str(EXAMPLE)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


def _classpath(jars: tuple[str, ...], *extra: Path) -> str:
    return os.pathsep.join([*(str(e) for e in extra), *(str(JARS / f"{j}.jar") for j in jars)])


def test_java_example_compiles(classes: Path) -> None:
    assert (classes / "dev" / "facerec" / "example" / "CompareExample.class").is_file()
    assert (classes / "dev" / "facerec" / "v1" / "FaceRecognitionGrpc.class").is_file()


def test_java_example_compares_against_the_real_server(classes: Path, tmp_path: Path, faces_dir: Path,
                                                       backend: object) -> None:
    server = ServeProcess(tmp_path / "data").start()
    try:
        proc = subprocess.run(["java", "-cp", _classpath(RUN_JARS, classes), "dev.facerec.example.CompareExample",
                               server.grpc_target, server.token("javaco"), str(faces_dir / PAIR[0]),
                               str(faces_dir / PAIR[1]), "java-ref-1"],
                              capture_output=True, text=True, timeout=300, check=False)
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first, second = proc.stdout.strip().splitlines()[-2:]
    scan_id, verdict = first.split()[0], " ".join(first.split()[1:3])
    assert verdict == "Same person" and "landmarks=68" in first
    assert second == f"stored {scan_id} reference=java-ref-1"
