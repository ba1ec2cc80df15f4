"""Device helpers, and DDP on CPU: two Gloo processes train a tiny model; ranks must end with identical weights."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

from advreid.data.torch_data import PKSampler
from advreid.device import (
    cleanup_distributed,
    init_distributed,
    rng_state,
    select_device,
    set_rng_state,
    unwrap,
    wrap_distributed,
)
from advreid.models.reid import build_reid_model
from advreid.reid.engine import build_scheduler, seed_everything, train

WORLD_SIZE = 2


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'gpu0'"):
        select_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_select_device_without_cuda() -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        select_device("cuda")


def test_single_process_needs_no_group(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed("cpu") == (0, 1, torch.device("cpu"))
    assert not dist.is_initialized()
    model = torch.nn.Linear(2, 2)
    assert wrap_distributed(model, torch.device("cpu")) is model and unwrap(model) is model
    with pytest.raises(ValueError, match="invalid rank 2"):
        init_distributed("cpu", rank=2, world_size=2)


def test_rng_state_round_trip() -> None:
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def _worker(rank: int, workdir: str) -> None:
    torch.set_num_threads(1)
    out = Path(workdir)
    rank_, world, device = init_distributed(
        "cpu", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        assert (rank_, world, device.type) == (rank, WORLD_SIZE, "cpu")
        assert dist.get_backend() == "gloo"
        g = torch.Generator().manual_seed(0)  # the same data on every rank; the sampler splits it
        labels = torch.arange(8).repeat_interleave(4)
        images = torch.rand(len(labels), 3, 32, 16, generator=g) * 0.5 + labels.view(-1, 1, 1, 1) / 16
        dataset = TensorDataset(images, labels, labels % 2)
        sampler = PKSampler(labels.numpy(), p=2, k=4, seed=0, rank=rank, world_size=WORLD_SIZE)
        loader = DataLoader(dataset, batch_size=8, sampler=sampler)

        seed_everything(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
        model = build_reid_model("small_cnn", num_classes=8, channels=(8, 16))
        initial = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
        model = wrap_distributed(model, device)
        assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scheduler = build_scheduler(optimizer, "step", epochs=2)
        history = train(model, loader, sampler, optimizer, scheduler, 2, out / "ckpt", device=device)

        flat = torch.cat([p.detach().flatten() for p in unwrap(model).parameters()])
        gathered = [torch.empty_like(flat) for _ in range(WORLD_SIZE)]
        dist.all_gather(gathered, flat)
        initials = [torch.empty_like(initial) for _ in range(WORLD_SIZE)]
        dist.all_gather(initials, initial)
        torch.save({"final": gathered, "initial": initials, "history": history}, out / f"rank{rank}.pt")
    finally:
        cleanup_distributed()


@pytest.mark.slow  # two spawned interpreters import torch: ~20-30 s on the loaded 2-core machine
def test_ranks_stay_in_sync(tmp_path) -> None:
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD_SIZE, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    final, initial = results[0]["final"], results[0]["initial"]
    assert not torch.equal(initial[0], initial[1])  # the ranks really started apart
    assert torch.equal(final[0], final[1])
    assert not torch.equal(final[0], initial[0])  # and training moved the weights
    # metrics are all-reduced, so both ranks record the same epoch means
    assert results[0]["history"] == results[1]["history"] and len(results[0]["history"]) == 2
    # only rank 0 wrote the checkpoint, and it holds the synchronised weights
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.pt"]
    state = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["model"]
    names = [name for name, _ in build_reid_model("small_cnn", num_classes=8, channels=(8, 16)).named_parameters()]
    assert torch.equal(torch.cat([state[name].flatten() for name in names]), final[0])
