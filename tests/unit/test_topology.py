"""How many workers ``facerec serve`` runs and each one's share: the automatic rule and the per-worker splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from server import topology
from server.inference import admission
from server.inference.admission import ACCELERATOR_IN_FLIGHT, CPU_IN_FLIGHT_PER_CORE, auto_max_in_flight
from server.inference.onnxrt import auto_intra_threads
from server.settings import Settings, SettingsError
from server.topology import auto_workers, cpu_quota_cores, group_size, worker_cores, worker_count, worker_share


def test_auto_workers_on_cpu_is_one_per_two_cores() -> None:
    cpu = Settings(device="cpu")
    assert [auto_workers(cpu, cores) for cores in (1, 2, 3, 4, 16, 64)] == [1, 1, 1, 2, 8, 32]


def test_auto_workers_with_triton_is_one_per_core() -> None:
    assert auto_workers(Settings(backend="triton"), 16) == 16
    assert auto_workers(Settings(backend="triton"), 1) == 1


def test_auto_workers_on_cuda_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topology, "on_accelerator", lambda settings: True)
    assert auto_workers(Settings(device="cuda"), 16) == 1


def test_an_explicit_count_wins() -> None:
    assert worker_count(Settings(device="cpu", workers=3)) == 3
    assert worker_count(Settings(backend="triton", workers=1)) == 1


def test_workers_setting_is_checked() -> None:
    assert Settings.from_env({"FACEREC_WORKERS": "4"}).workers == 4
    with pytest.raises(SettingsError, match="FACEREC_WORKERS"):
        Settings.from_env({"FACEREC_WORKERS": "-1"})
    with pytest.raises(SettingsError, match="FACEREC_WORKERS"):
        Settings.from_env({"FACEREC_WORKERS": "many"})


def test_a_single_process_keeps_the_whole_machine() -> None:
    for workers in (0, 1):
        s = Settings(device="cpu", workers=workers)
        assert group_size(s) == 1
        assert worker_cores(s) is None  # the backend's own default, as before workers existed
        assert worker_share(100, s) == 100


def test_each_worker_gets_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topology, "usable_cores", lambda: 16)
    s = Settings(device="cpu", workers=8)
    assert worker_cores(s) == 2
    assert worker_share(100, s) == 13  # rounded up: the workers together admit at least the node's total
    assert worker_share(3, Settings(workers=8)) == 1
    # onnxruntime: the worker's two cores shared by its three model sessions -> one thread each
    assert auto_intra_threads(3, ["CPUExecutionProvider"], worker_cores(s)) == 1
    assert auto_intra_threads(3, ["CPUExecutionProvider"], 12) == 4


def test_admission_limit_is_split_between_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "available_cores", lambda: 4)
    one = auto_max_in_flight(Settings(device="cpu"))
    assert one == CPU_IN_FLIGHT_PER_CORE * 4
    assert auto_max_in_flight(Settings(device="cpu", workers=2)) == one // 2
    assert auto_max_in_flight(Settings(backend="triton", workers=4)) == ACCELERATOR_IN_FLIGHT // 4


def test_a_container_cpu_limit_caps_the_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota_cores(v2) == 2  # 1.5 CPUs: rounded up
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpu_quota_cores(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota_cores(v1) == 4
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota_cores(v1) is None
    assert cpu_quota_cores(tmp_path / "nothing") is None

    monkeypatch.setattr(topology, "available_cores", lambda: 64)
    monkeypatch.setattr(topology, "cpu_quota_cores", lambda: 2)
    assert topology.usable_cores() == 2
    assert auto_workers(Settings(backend="triton")) == 2  # not 64 processes in a 2-CPU pod
    assert auto_workers(Settings(device="cpu")) == 1
