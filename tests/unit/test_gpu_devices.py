"""GPU devices, capacity and offload plans, with synthetic ggml device lists (no GPU needed)."""

from __future__ import annotations

import json

import pytest

from mesh_llm.errors import BackendError, ConfigError
from mesh_llm.planning.offload import (
    ALL_LAYERS,
    auto_ctx,
    cache_type,
    draft_offload,
    kv_bytes_per_token,
    memory_shares,
    solo_offload,
    split_host_offload,
)
from mesh_llm.planning.placement import RpcDevice, llama_placement
from mesh_llm.serving.devices import Device, DeviceKind, parse_device_list, select_devices
from mesh_llm.serving.hardware import capacity_from_devices, detect_capacity

GIB = 1024**3
CPU = Device("CPU", "AMD EPYC", DeviceKind.CPU, 20 * GIB, 32 * GIB)
CUDA0 = Device("CUDA0", "NVIDIA H200", DeviceKind.GPU, 130 * GIB, 140 * GIB)
CUDA1 = Device("CUDA1", "NVIDIA RTX 4090", DeviceKind.GPU, 20 * GIB, 24 * GIB)
BLAS = Device("BLAS", "OpenBLAS", DeviceKind.ACCEL, 0, 0)
IGPU = Device("Vulkan0", "AMD Radeon 780M", DeviceKind.IGPU, 8 * GIB, 16 * GIB)


def test_default_picks_every_gpu_and_cpu_when_there_is_none() -> None:
    assert select_devices([CPU, CUDA0, CUDA1, BLAS], None) == (CUDA0, CUDA1)
    assert select_devices([CPU, BLAS], None) == (CPU,)
    assert select_devices([CPU, IGPU], "auto") == (IGPU,)


def test_device_names_pick_in_order_case_insensitively() -> None:
    assert select_devices([CPU, CUDA0, CUDA1], "cuda1,CUDA0") == (CUDA1, CUDA0)
    assert select_devices([CPU, CUDA0, CUDA1], "CUDA0,CUDA0") == (CUDA0,)
    assert select_devices([CPU, CUDA0], "cpu") == (CPU,)


@pytest.mark.parametrize("spec", ["CUDA2", "foo", "CUDA0,nope"])
def test_unknown_device_is_an_error_listing_those_present(spec: str) -> None:
    with pytest.raises(ConfigError) as err:
        select_devices([CPU, CUDA0, CUDA1], spec)
    assert "CPU, CUDA0, CUDA1" in str(err.value)


def test_cpu_mixed_with_gpus_or_an_accelerator_is_refused() -> None:
    with pytest.raises(ConfigError, match="CPU alone"):
        select_devices([CPU, CUDA0], "CUDA0,CPU")
    with pytest.raises(ConfigError, match="ACCEL"):
        select_devices([CPU, BLAS], "BLAS")


def test_capacity_is_the_chosen_gpus_free_memory_capped_by_max_vram() -> None:
    devices = [CPU, CUDA0, CUDA1]
    cap = capacity_from_devices(devices, None, ram_total=32 * GIB, ram_available=20 * GIB)
    assert (cap.kind, cap.offered_bytes, cap.total_bytes) == ("gpu", 150 * GIB, 164 * GIB)
    assert cap.gpu_names == ("CUDA0", "CUDA1")
    assert "NVIDIA H200" in cap.device
    one = capacity_from_devices(
        devices, "CUDA1", ram_total=32 * GIB, ram_available=20 * GIB, max_bytes=8 * GIB
    )
    assert (one.offered_bytes, one.gpu_names) == (8 * GIB, ("CUDA1",))
    client = capacity_from_devices(devices, None, ram_total=32 * GIB, ram_available=20 * GIB, client=True)
    assert client.offered_bytes == 0


def test_cpu_capacity_is_the_ram_share_as_before() -> None:
    cpu = capacity_from_devices([CPU], None, ram_total=32 * GIB, ram_available=20 * GIB)
    none = capacity_from_devices([], None, ram_total=32 * GIB, ram_available=20 * GIB)
    assert cpu == none
    assert (cpu.kind, cpu.device, cpu.devices) == ("ram", "cpu", ())
    forced = capacity_from_devices([CPU, CUDA0], "CPU", ram_total=32 * GIB, ram_available=20 * GIB)
    assert forced == cpu


def test_detect_capacity_uses_the_given_device_list_and_checks_device() -> None:
    cap = detect_capacity(device="CUDA0", list_devices=lambda: [CPU, CUDA0])
    assert cap.gpu_names == ("CUDA0",)
    with pytest.raises(ConfigError, match="no device 'CUDA3'"):
        detect_capacity(device="CUDA3", list_devices=lambda: [CPU, CUDA0])


def test_detect_capacity_here_reads_the_real_registry_for_an_explicit_device() -> None:
    # This machine's llama.cpp is a CPU build: the default path is RAM, and --device is checked.
    assert detect_capacity().kind == "ram"
    with pytest.raises(ConfigError, match="CPU"):
        detect_capacity(device="CUDA0")
    assert detect_capacity(device="cpu").kind == "ram"


def test_device_list_round_trips_through_json() -> None:
    text = json.dumps([d.as_dict() for d in (CPU, CUDA0, IGPU)])
    assert parse_device_list(text) == [CPU, CUDA0, IGPU]


def test_solo_model_goes_wholly_on_the_gpus_divided_by_free_memory() -> None:
    assert solo_offload([]) is None
    one = solo_offload([("CUDA0", 130 * GIB)])
    assert one is not None and (one.devices, one.n_gpu_layers, one.tensor_split) == (
        ("CUDA0",),
        ALL_LAYERS,
        (),
    )
    two = solo_offload([("CUDA0", 30 * GIB), ("CUDA1", 10 * GIB)])
    assert two is not None and two.tensor_split == (30720.0, 10240.0)
    placement = llama_placement(32, two.n_gpu_layers, two.tensor_split)
    assert -1 not in placement  # nothing left on the CPU, output head included
    assert placement.count(0) == 25 and placement.count(1) == 8
    assert two.server_args() == [
        "--gpu-devices", "CUDA0,CUDA1", "--n-gpu-layers", str(ALL_LAYERS), "--tensor-split", "30720,10240",
    ]  # fmt: skip


def test_memory_shares_give_a_nearly_full_gpu_a_share() -> None:
    assert memory_shares([0, 2 * 1024 * 1024]) == (1.0, 2.0)


def test_draft_goes_on_the_hosts_first_gpu() -> None:
    assert draft_offload([]) is None
    d = draft_offload([("CUDA1", 5), ("CUDA0", 9)])
    assert d is not None and d.devices == ("CUDA1",) and d.n_gpu_layers == ALL_LAYERS


@pytest.mark.parametrize("split", [(10, 12, 8), (0, 30), (29, 1), (5, 5, 5, 15)])
def test_split_host_keeps_exactly_its_range_on_its_gpu(split: tuple[int, ...]) -> None:
    plan = split_host_offload([("CUDA0", 8 * GIB)], split)
    placement = llama_placement(sum(split), plan.settings.n_gpu_layers, plan.settings.tensor_split)
    want: list[int] = []
    for device, count in enumerate(split):
        want += [device] * count
    assert list(placement[:-1]) == want  # device 0 is the host GPU, then the RPC devices in order
    assert -1 not in placement


def test_split_host_offload_rejects_bad_splits() -> None:
    with pytest.raises(ConfigError):
        split_host_offload([("CUDA0", 1)], (30,))
    with pytest.raises(ConfigError):
        split_host_offload([("CUDA0", 1)], (10, 0))


def test_cache_types_map_to_ggml_types() -> None:
    assert (cache_type("f16"), cache_type("Q8_0"), cache_type("q4_0")) == (1, 8, 2)
    with pytest.raises(ConfigError, match="q8_0"):
        cache_type("int3")


def test_context_follows_free_memory_after_the_weights() -> None:
    # A Llama-3-8B-like shape: 32 layers, 8 KV heads of 128 dims, f16 -> 128 KiB per token.
    per_token = kv_bytes_per_token(32, 8, 128, 128, type_k="f16", type_v="f16")
    assert per_token == 128 * 1024
    q8 = kv_bytes_per_token(32, 8, 128, 128, type_k="q8_0", type_v="q8_0")
    assert q8 < per_token / 1.8
    # 8.5 GiB free after the weights, 4 slots: (8.5 GiB - 512 MiB reserve) / 128 KiB / 4 = 16384.
    assert auto_ctx(int(8.5 * GIB), per_token, 4, n_ctx_train=131072, fallback=4096) == 16384
    assert auto_ctx(200 * GIB, per_token, 4, n_ctx_train=8192, fallback=4096) == 8192  # the model's limit
    assert auto_ctx(600 * 1024 * 1024, per_token, 4, n_ctx_train=8192, fallback=4096) == 256  # the floor
    assert auto_ctx(None, per_token, 4, n_ctx_train=8192, fallback=4096) == 4096  # nothing known
    assert auto_ctx(0, per_token, 4, n_ctx_train=8192, fallback=4096) == 256  # no memory: the floor


def test_gpus_command_lists_this_machines_devices_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    from mesh_llm.cli import main

    assert main(["gpus", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["devices"]
    cpu = next(r for r in rows if r["kind"] == "cpu")
    assert cpu["name"] == "CPU" and cpu["total_bytes"] > 0
    assert main(["gpus", "--device", "NOPE"]) == 1
    assert "no device 'NOPE'" in capsys.readouterr().err


def test_gpus_table_marks_the_chosen_devices() -> None:
    from rich.console import Console

    from mesh_llm.cli.gpus import devices_table
    from mesh_llm.cli.render import human_bytes

    console = Console(width=120, record=True)
    console.print(devices_table([CPU, CUDA0, CUDA1], [CUDA1]))
    text = console.export_text()
    assert "NVIDIA RTX 4090" in text and human_bytes(CUDA0.total_bytes) in text
    row = next(line for line in text.splitlines() if "CUDA1" in line)
    assert "*" in row


def test_model_server_flags_on_gpus_and_none_on_the_cpu_path() -> None:
    from mesh_llm.config import BackendConfig, build_config
    from mesh_llm.serving.model_server import gpu_server_args

    cpu_config = build_config(models=["m"]).backend
    assert gpu_server_args(cpu_config, [], split=False) == []  # the CPU path is unchanged
    assert (cpu_config.n_ctx, cpu_config.n_ctx_auto) == (4096, True)
    solo = gpu_server_args(cpu_config, [("CUDA0", 10 * GIB)], split=False)
    assert solo == ["--gpu-devices", "CUDA0", "--n-gpu-layers", str(ALL_LAYERS), "--auto-ctx"]
    fixed = build_config(models=["m"], ctx_size=2048, cache_type_k="q8_0", cache_type_v="q4_0").backend
    assert gpu_server_args(fixed, [("CUDA0", 1), ("CUDA1", 1)], split=False) == [
        "--cache-type-k", "q8_0", "--cache-type-v", "q4_0",
        "--gpu-devices", "CUDA0,CUDA1", "--n-gpu-layers", str(ALL_LAYERS), "--tensor-split", "1,1",
    ]  # fmt: skip
    budget = gpu_server_args(
        build_config(models=["m"], max_vram=2).backend, [("CUDA0", 10 * GIB)], split=False
    )
    assert budget[-3:] == ["--auto-ctx", "--gpu-budget", str(2 * GIB)]  # --max-vram bounds the context too
    split_host = gpu_server_args(BackendConfig(), [("CUDA1", 1), ("CUDA0", 1)], split=True)
    assert split_host == ["--gpu-devices", "CUDA1,CUDA0"]  # the host's own layers on both, a draft on CUDA1


def test_several_models_on_one_node_keep_the_context_the_planner_counted() -> None:
    from mesh_llm.config import build_config
    from mesh_llm.serving.model_server import gpu_server_args

    # Sized to free memory, the first model's KV caches would take the room the second needs.
    two = build_config(models=["a", "b"]).backend
    assert (two.n_ctx, two.n_ctx_auto) == (4096, False)
    assert "--auto-ctx" not in gpu_server_args(two, [("CUDA0", 10 * GIB)], split=False)


def test_context_memory_is_what_is_free_within_the_max_vram_budget() -> None:
    from mesh_llm.planning.offload import auto_ctx, context_memory

    assert context_memory(20 * GIB, 4 * GIB, None) == 20 * GIB  # no budget: all that is free
    assert context_memory(20 * GIB, 4 * GIB, 6 * GIB) == 2 * GIB  # the budget less the weights
    assert context_memory(1 * GIB, 4 * GIB, 6 * GIB) == 1 * GIB  # never more than is free
    assert context_memory(20 * GIB, 7 * GIB, 6 * GIB) == 0  # weights beyond the budget...
    assert (
        auto_ctx(context_memory(20 * GIB, 7 * GIB, 6 * GIB), 1e5, 4, n_ctx_train=8192, fallback=4096) == 256
    )


def test_unknown_cache_type_is_a_config_error() -> None:
    from mesh_llm.config import build_config

    with pytest.raises(ConfigError, match="q8_0"):
        build_config(models=["m"], cache_type_v="q2")


def test_a_split_host_on_its_gpu_expects_its_layers_and_head_there() -> None:
    from mesh_llm.planning.offload import split_host_offload
    from mesh_llm.planning.placement import HostSplit, Placement

    rpc = (RpcDevice("127.0.0.1:1", "RPC0", 1), RpcDevice("127.0.0.1:2", "RPC1", 2))
    on_gpu = split_host_offload([("CUDA0", 8 * GIB)], (2, 1, 1))
    offload = on_gpu.settings
    split = HostSplit(
        ("127.0.0.1:1", "127.0.0.1:2"), (2, 1, 1), offload, rpc, on_gpu.host_devices, on_gpu.host_counts
    )
    assert split.expected_devices() == ("CUDA0", "CUDA0", "RPC0", "RPC1")
    split.check(Placement(("CUDA0", "CUDA0", "RPC0", "RPC1"), "CUDA0"))
    with pytest.raises(BackendError, match="layers \\[0, 1\\]"):  # a host that stayed on its CPU
        split.check(Placement(("CPU", "CPU", "RPC0", "RPC1"), "CUDA0"))
    with pytest.raises(BackendError, match="output head"):
        split.check(Placement(("CUDA0", "CUDA0", "RPC0", "RPC1"), "CPU"))


def test_a_split_host_with_two_gpus_divides_its_layers_by_their_free_memory() -> None:
    from mesh_llm.planning.offload import divide_layers, split_host_offload
    from mesh_llm.planning.placement import HostSplit

    assert divide_layers(9, [2 * GIB, 1 * GIB]) == (6, 3)
    assert divide_layers(10, [1, 1, 1]) == (4, 3, 3)  # remainders to the earlier GPU
    assert divide_layers(0, [5, 5]) == (0, 0)
    plan = split_host_offload([("CUDA0", 16 * GIB), ("CUDA1", 8 * GIB)], (24, 6))
    assert plan.host_counts == (16, 8) and plan.settings.tensor_split == (16.0, 8.0, 7.0)
    placement = llama_placement(30, plan.settings.n_gpu_layers, plan.settings.tensor_split)
    assert placement == (0,) * 16 + (1,) * 8 + (2,) * 6 + (2,)  # CUDA0, CUDA1, then the RPC device
    rpc = (RpcDevice("127.0.0.1:1", "RPC0", 1),)
    offload = plan.settings
    split = HostSplit(("127.0.0.1:1",), (24, 6), offload, rpc, plan.host_devices, plan.host_counts)
    assert split.expected_devices() == ("CUDA0",) * 16 + ("CUDA1",) * 8 + ("RPC0",) * 6
