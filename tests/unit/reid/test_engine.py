"""Training engine: schedules by hand, learning on a separable set, subclassing, bit-exact checkpoint resume."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from advreid.data.torch_data import PKSampler
from advreid.models.reid import build_reid_model
from advreid.reid.engine import (
    LAST_CHECKPOINT,
    ReIDEngine,
    build_scheduler,
    load_checkpoint,
    seed_everything,
    train,
)

CPU = torch.device("cpu")


class TwoTone(Dataset):
    """6 identities: the ordered pairs of distinct colours (top half, bottom half) of a 32 x 16 image, plus noise.

    Swapped pairs share their mean colour, so identities differ only in layout. ``augment`` adds random noise and
    flips drawn from torch's and NumPy's global generators, which checkpoints must restore.
    """

    def __init__(self, per_id: int = 8, augment: bool = False):
        colours = torch.eye(3) * 0.8 + 0.1
        pairs = list(itertools.permutations(range(3), 2))
        self.labels = torch.arange(len(pairs)).repeat_interleave(per_id)
        top = colours[[pairs[i][0] for i in self.labels]].view(-1, 3, 1, 1).expand(-1, 3, 16, 16)
        bottom = colours[[pairs[i][1] for i in self.labels]].view(-1, 3, 1, 1).expand(-1, 3, 16, 16)
        noise = 0.2 * torch.randn(len(self.labels), 3, 32, 16, generator=torch.Generator().manual_seed(0))
        self.images = (torch.cat([top, bottom], 2) + noise).clamp(0, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i]
        if self.augment:
            image = (image + 0.05 * torch.randn_like(image)).clamp(0, 1)
            if np.random.rand() < 0.5:
                image = image.flip(2)
        return image, int(self.labels[i]), i % 2, i


def _loader(dataset: TwoTone, p: int = 3, k: int = 4) -> tuple[DataLoader, PKSampler]:
    sampler = PKSampler(dataset.labels.numpy(), p=p, k=k, seed=0)  # 2 batches of 12 images per epoch
    return DataLoader(dataset, batch_size=p * k, sampler=sampler), sampler


def _lrs(scheduler, epochs: int) -> list[float]:
    values = []
    for _ in range(epochs):
        values.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()  # the order torch expects: optimizer, then scheduler
        scheduler.step()
    return values


def test_step_schedule_with_warmup_by_hand() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, "step", epochs=8, warmup_epochs=4, milestones=[6], gamma=0.1)
    expected = [0.01, 0.01 + 0.99 / 4, 0.01 + 0.99 / 2, 0.01 + 0.99 * 3 / 4, 1.0, 1.0, 0.1, 0.1]
    assert _lrs(sched, 8) == pytest.approx(expected)


def test_cosine_schedule_with_warmup_by_hand() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, "cosine", epochs=6, warmup_epochs=2, warmup_factor=0.5)
    cos = [0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]  # 4 epochs after warm-up
    assert _lrs(sched, 6) == pytest.approx([2.0 * f for f in [0.5, 0.75, *cos]])


def test_schedule_rejects_bad_arguments() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(KeyError, match="cosine"):
        build_scheduler(opt, "linear", epochs=3)
    with pytest.raises(ValueError, match="warmup_epochs"):
        build_scheduler(opt, "step", epochs=3, warmup_epochs=4)


def test_training_learns_separable_identities() -> None:
    seed_everything(0)
    dataset = TwoTone()
    loader, sampler = _loader(dataset)
    model = build_reid_model("small_cnn", num_classes=6, channels=(8, 16, 16))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = build_scheduler(optimizer, "step", epochs=15, warmup_epochs=2, milestones=[12])
    history = train(model, loader, sampler, optimizer, scheduler, 15, None, device=CPU, log_every=1)
    assert [h["epoch"] for h in history] == list(range(1, 16))
    assert [h["lr"] for h in history[:3]] == pytest.approx([1e-4, 1e-2 * (0.01 + 0.99 / 2), 1e-2])
    assert history[-1]["lr"] == pytest.approx(1e-3)
    assert np.mean([h["loss"] for h in history[-3:]]) < 0.6 * history[0]["loss"]
    assert history[0]["loss_triplet"] > 0 and history[-1]["loss_triplet"] < history[0]["loss_triplet"]
    for record in history:
        assert record["loss"] == pytest.approx(record["loss_ce"] + record["loss_triplet"], rel=1e-5)
    # independent check in eval mode: the classifier on f_i identifies the training images
    model.eval()
    with torch.no_grad():
        predicted = model.head.classifier(model(dataset.images)).argmax(1)
    assert (predicted == dataset.labels).float().mean().item() >= 0.9


def test_subclass_overrides_only_forward_backward() -> None:
    batch_losses: list[float] = []

    class CrossEntropyOnly(ReIDEngine):
        def forward_backward(self, batch):
            out = self.model(batch[0])
            loss = F.cross_entropy(out.logits, batch[1])
            self.optimizer_step(loss)
            batch_losses.append(loss.item())
            return {"loss": loss.item()}

    seed_everything(1)
    loader, sampler = _loader(TwoTone())
    model = build_reid_model("small_cnn", num_classes=6, channels=(8, 16))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    history = train(model, loader, sampler, optimizer, None, 2, None, device=CPU, engine_cls=CrossEntropyOnly)
    assert set(history[0]) == {"loss", "lr", "epoch"}
    # PK batches all hold 12 images, so the image-weighted epoch mean is the plain mean of the 2 batches
    assert [h["loss"] for h in history] == pytest.approx([np.mean(batch_losses[:2]), np.mean(batch_losses[2:])])


def test_amp_is_cuda_only() -> None:
    model = build_reid_model("small_cnn", num_classes=6, channels=(8,))
    with pytest.warns(UserWarning, match="amp=True ignored"):
        engine = ReIDEngine(model, torch.optim.SGD(model.parameters(), lr=0.1), device=CPU, amp=True)
    assert not engine.amp and not engine.scaler.is_enabled()


class _Interrupt(RuntimeError):
    pass


def _setup(seed: int):
    seed_everything(seed)
    model = build_reid_model("small_cnn", num_classes=6, channels=(8, 16, 16))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = build_scheduler(optimizer, "cosine", epochs=3, warmup_epochs=1)
    return model, optimizer, scheduler


def _evaluate_with_randomness(epoch: int, record: dict) -> None:
    torch.rand(3), np.random.rand(), torch.randperm(5)  # a callback's draws must not change training


@pytest.mark.parametrize("sampling", ["pk", "shuffle"])
def test_resume_after_interrupt_is_bit_exact(tmp_path, sampling: str) -> None:
    dataset = TwoTone(augment=True)

    def make_loader():  # PK sampling, or a DataLoader shuffling with its own generator
        if sampling == "pk":
            return _loader(dataset)
        return DataLoader(dataset, batch_size=12, shuffle=True, generator=torch.Generator().manual_seed(7)), None

    model, optimizer, scheduler = _setup(0)
    loader, sampler = make_loader()
    full = train(
        model,
        loader,
        sampler,
        optimizer,
        scheduler,
        3,
        tmp_path / "full",
        device=CPU,
        on_epoch_end=_evaluate_with_randomness,
    )
    expected_state = {k: v.clone() for k, v in model.state_dict().items()}

    def stop_after_first(epoch: int, record: dict) -> None:
        _evaluate_with_randomness(epoch, record)
        assert load_checkpoint(tmp_path / "cut" / "last.pt", _setup(5)[0])["epoch"] == epoch + 1
        raise _Interrupt

    model, optimizer, scheduler = _setup(0)
    loader, sampler = make_loader()
    with pytest.raises(_Interrupt):
        train(
            model, loader, sampler, optimizer, scheduler, 3, tmp_path / "cut", device=CPU, on_epoch_end=stop_after_first
        )
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["last.pt"]  # no temporary left behind

    model, optimizer, scheduler = _setup(123)  # a different init: everything must come from the checkpoint
    loader, sampler = make_loader()
    resumed = train(
        model,
        loader,
        sampler,
        optimizer,
        scheduler,
        3,
        tmp_path / "cut",
        device=CPU,
        on_epoch_end=_evaluate_with_randomness,
    )

    assert len(resumed) == 3 and resumed == full  # the history holds no timings, so it repeats exactly
    state = model.state_dict()
    assert state.keys() == expected_state.keys()
    assert all(torch.equal(state[k], expected_state[k]) for k in state)
    assert not torch.equal(state["head.classifier.weight"], _setup(0)[0].state_dict()["head.classifier.weight"])


def test_finished_run_does_not_train_again(tmp_path) -> None:
    model, optimizer, scheduler = _setup(0)
    loader, sampler = _loader(TwoTone())
    first = train(model, loader, sampler, optimizer, scheduler, 1, tmp_path, device=CPU)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    again = train(model, loader, sampler, optimizer, scheduler, 1, tmp_path, device=CPU)
    assert again == first
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_retraining_writes_the_same_checkpoint_bytes_and_reports_throughput_only_to_the_callback(tmp_path):
    seen: list[dict] = []
    for name in ("a", "b"):
        model, optimizer, scheduler = _setup(0)
        loader, sampler = _loader(TwoTone())
        history = train(
            model, loader, sampler, optimizer, scheduler, 2, tmp_path / name, device=CPU,
            on_epoch_end=lambda epoch, record: seen.append(record),
        )  # fmt: skip
        assert [sorted(r) for r in history] == [["acc", "epoch", "loss", "loss_ce", "loss_triplet", "lr"]] * 2
    assert len(seen) == 4 and all(r["images_per_second"] > 0 for r in seen)  # wall-clock rates go to MLflow
    assert (tmp_path / "a" / LAST_CHECKPOINT).read_bytes() == (tmp_path / "b" / LAST_CHECKPOINT).read_bytes()


def test_checkpoints_of_the_same_state_have_identical_bytes(tmp_path):
    from advreid.reid.engine import save_checkpoint

    model = torch.nn.Linear(3, 2)
    rng = {"torch": torch.zeros(4, dtype=torch.uint8)}
    save_checkpoint(tmp_path / "a.pt", model, epoch=1, history=[], rng=rng, meta={"arch": "x"})
    save_checkpoint(tmp_path / "b.pt", model, epoch=1, history=[], rng=rng, meta={"arch": "x"})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_set_threads_validates_and_sets():
    from advreid.device import set_threads
    from advreid.params import ParamsError

    before = torch.get_num_threads()
    set_threads(0, "x.threads")  # 0 keeps torch's default
    assert torch.get_num_threads() == before
    set_threads(2, "x.threads")
    assert torch.get_num_threads() == 2
    torch.set_num_threads(before)
    with pytest.raises(ParamsError, match="x.threads: must be >= 0"):
        set_threads(-1, "x.threads")


def test_pk_sampler_gives_k_distinct_images_per_identity_and_disjoint_batches_per_rank():
    """Catches sampling with replacement where an identity has >= K images, and ranks that share batches."""
    labels = np.repeat(np.arange(8), 5)  # 8 identities x 5 images
    p, k, world = 2, 4, 2
    for epoch in range(5):
        per_rank = []
        for rank in range(world):
            sampler = PKSampler(labels, p=p, k=k, seed=3, rank=rank, world_size=world)
            sampler.set_epoch(epoch)
            indices = list(sampler)
            assert len(indices) == len(sampler) == 2 * p * k  # 8 ids // P = 4 batches, 2 per rank
            batches = [indices[i : i + p * k] for i in range(0, len(indices), p * k)]
            for batch in batches:
                ids = labels[batch]
                assert len(set(ids.tolist())) == p
                for identity in set(ids.tolist()):
                    members = [i for i in batch if labels[i] == identity]
                    assert len(members) == k == len(set(members))  # K distinct images
            per_rank.append({frozenset(labels[b].tolist()) for b in batches})
        ids_0 = set().union(*per_rank[0])
        ids_1 = set().union(*per_rank[1])
        assert not ids_0 & ids_1  # one epoch's identities split between the ranks, no batch shared


def test_an_unreadable_last_checkpoint_is_discarded_without_torchs_advice(tmp_path, capsys):
    """A truncated or malicious last.pt restarts training at epoch 1; stderr names the file, never weights_only."""
    import os

    from advreid.reid.engine import resumable_epochs

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"epoch": Evil()}, tmp_path / "evil.pt")
    torch.save({"epoch": 3, "meta": {"fingerprint": "f"}, "pad": torch.zeros(1000)}, tmp_path / "cut.pt")
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    for name in ("evil.pt", "cut.pt"):
        assert resumable_epochs(tmp_path / name, "f", 10, stage="train_reid@x", written_with="settings") == 0
        err = capsys.readouterr().err
        assert f"discarding checkpoint {tmp_path / name}" in err and "weights_only" not in err
        assert not (tmp_path / name).exists()
    assert not (tmp_path / "ran").exists()
