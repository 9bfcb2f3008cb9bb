"""Device and process-group set-up, shared by the CLI and the Python API."""
import pytest
import torch

from ltstg.errors import LtstgError
from ltstg.runtime import make_context, resolve_device, torchrun_env


def test_devices_resolve_or_fail_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for name, message in (("cuda", "torch sees no CUDA device"), ("cuda:0", "torch sees no CUDA device"),
                          ("tpu", "is not a device")):
        with pytest.raises(LtstgError, match=message):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(LtstgError, match="cuda:1 does not exist: torch sees 1 CUDA device"):
        resolve_device("cuda:1")


def test_a_single_process_context_records_where_it_ran(tmp_path, monkeypatch):
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    said = []
    ctx = make_context(tmp_path / "store", "cpu", force=True, note=said.append)
    assert ctx.device == torch.device("cpu") and ctx.is_main and ctx.force
    assert ctx.run_options["world_size"] == 1 and ctx.run_options["threads"] == torch.get_num_threads()
    ctx.note("hello")
    assert said == ["hello"]


def test_torchrun_variables_are_read_and_checked(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_env() == (1, 2, 1)
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(LtstgError, match="must be integers"):
        torchrun_env()


def fake_cuda(monkeypatch, count):
    """torch answers as on a box with `count` GPUs; set_device and the process group only record their calls."""
    calls = []
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored after the test
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", torch.device(device))))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: calls.append(("init", backend)))
    return calls


def test_a_local_rank_without_a_gpu_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    calls = fake_cuda(monkeypatch, 1)
    for variable, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(variable, value)
    with pytest.raises(LtstgError, match=r"LOCAL_RANK 1 has no GPU: torch sees 1 CUDA device.*--nproc-per-node 1"):
        make_context(tmp_path / "store", "cuda")
    assert calls == []  # refused before any CUDA or NCCL set-up
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    at_exit = []
    monkeypatch.setattr("atexit.register", at_exit.append)
    ctx = make_context(tmp_path / "store", "cuda")
    assert ctx.device == torch.device("cuda", 0) and calls == [("set_device", torch.device("cuda", 0)), ("init", "nccl")]
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: calls.append(("destroy",)))
    [leave] = at_exit
    leave()  # what the process runs when it exits
    assert calls[-1] == ("destroy",)


def test_a_single_process_on_another_gpu_makes_it_the_current_device(tmp_path, monkeypatch):
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    calls = fake_cuda(monkeypatch, 2)
    ctx = make_context(tmp_path / "store", "cuda:1")
    assert ctx.device == torch.device("cuda", 1) and calls == [("set_device", torch.device("cuda", 1))]
