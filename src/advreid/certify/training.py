"""Training the chapter-6 defenses: a denoiser (+ encoder) in front of a frozen target, first or zeroth order.

A method is denoiser (DnCNN | RDUNet) x objective ("ds": MSE + stability, thesis eq. 6.8 | "ruds": eq. 6.13)
x order (first: back-propagation through the target, white box | zeroth: query-only black box) x autoencoder.
Zeroth-order steps estimate the gradient at the white-box output z (the denoised image, eq. 6.15, with RGE
eq. 6.16; or the encoder latent, eq. 6.18, with CGE eq. 6.19 in the AE variants, where the frozen decoder
joins the black box, Fig. 6.3) and chain it into the white box by autograd. The MSE term of eq. 6.8 needs
no query (it compares the denoiser's output with the clean image), so it is back-propagated exactly.

The targets of every objective are the black box's own outputs on the clean inputs (thesis Sec. 6.4: no
dataset labels), computed once by :func:`black_box_scores`. Tasks (classification here, reconstruction in
:mod:`advreid.certify.reconstruction`) supply the scores, the query-only wrapper and the objectives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advreid.certify.blackbox import BlackBox
from advreid.certify.objectives import cross_entropy_from_probs, total_loss, total_loss_per_sample
from advreid.certify.zeroth_order import cge_gradient, rge_gradient, zo_backward
from advreid.device import rng_state, set_rng_state
from advreid.models.denoisers import ConvDecoder, ConvEncoder, build_denoiser
from advreid.progress import progress as show_progress
from advreid.reid.engine import load_checkpoint, save_checkpoint

QueryFn = Callable[[Tensor], Tensor]
ORDERS = ("first", "zeroth")
OBJECTIVES = ("ds", "ruds")
ESTIMATORS = ("rge", "cge")


@dataclass(frozen=True)
class DefenseMethod:
    """One row of Tables 6.1-6.5.

    Attributes:
        name: registry key (also the DVC foreach key).
        label: the name printed in the thesis tables.
        denoiser: ``dncnn`` or ``rdunet``.
        objective: ``ds`` (eq. 6.8) or ``ruds`` (eq. 6.13).
        order: ``first`` (white box) or ``zeroth`` (black box).
        autoencoder: an encoder after the denoiser and a frozen, pre-trained decoder before the target.
        estimator: ``rge`` or ``cge`` for zeroth order, None for first order.
        use_cs, use_mmd: keep the cosine / MMD terms of eq. 6.13 (Table 6.4 drops them).
        finetune: pre-train the denoiser on MSE denoising first (Table 6.5's "finetune" strategy).
    """

    name: str
    label: str
    denoiser: str
    objective: str
    order: str
    autoencoder: bool
    estimator: str | None = None
    use_cs: bool = True
    use_mmd: bool = True
    finetune: bool = False

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES or self.order not in ORDERS:
            raise ValueError(f"method {self.name}: objective must be in {OBJECTIVES}, order in {ORDERS}")
        if (self.order == "zeroth") != (self.estimator in ESTIMATORS):
            raise ValueError(f"method {self.name}: zeroth order needs an estimator in {ESTIMATORS}, first order none")
        if self.estimator == "cge" and not self.autoencoder:
            raise ValueError(f"method {self.name}: CGE needs the low-dimensional latent of an autoencoder")

    @property
    def zeroth_order(self) -> bool:
        return self.order == "zeroth"


def _method(name: str, label: str, denoiser: str, objective: str, estimator: str | None, ae: bool, **kw) -> tuple:
    order = "first" if estimator is None else "zeroth"
    return name, DefenseMethod(name, label, denoiser, objective, order, ae, estimator, **kw)


METHODS: dict[str, DefenseMethod] = dict(
    [
        _method("fo_ds", "FO-DS", "dncnn", "ds", None, False),
        _method("fo_ae_ds", "FO-AE-DS", "dncnn", "ds", None, True),
        _method("zo_ds", "ZO-DS (R)", "dncnn", "ds", "rge", False),
        _method("zo_ae_ds", "ZO-AE-DS (C)", "dncnn", "ds", "cge", True),
        _method("zo_ae_ds_rge", "ZO-AE-DS (R)", "dncnn", "ds", "rge", True),
        _method("fo_ruds", "FO-RUDS", "rdunet", "ruds", None, False),
        _method("fo_ae_ruds", "FO-AE-RUDS", "rdunet", "ruds", None, True),
        _method("zo_ruds", "ZO-RUDS (R)", "rdunet", "ruds", "rge", False),
        _method("zo_ae_ruds", "ZO-AE-RUDS (C)", "rdunet", "ruds", "cge", True),
        _method("zo_ae_ruds_rge", "ZO-AE-RUDS (R)", "rdunet", "ruds", "rge", True),
        # Table 6.4 (loss ablation) and Table 6.5 (training strategy) of ZO-AE-RUDS (C)
        _method("zo_ae_ruds_ce", "ZO-AE-RUDS (C) L_CE", "rdunet", "ruds", "cge", True, use_cs=False, use_mmd=False),
        _method("zo_ae_ruds_ce_cs", "ZO-AE-RUDS (C) L_CE + L_CS", "rdunet", "ruds", "cge", True, use_mmd=False),
        _method("zo_ae_ruds_finetune", "ZO-AE-RUDS (C) finetune", "rdunet", "ruds", "cge", True, finetune=True),
    ]
)


def get_method(name: str) -> DefenseMethod:
    """The registered method called ``name``."""
    if name not in METHODS:
        raise KeyError(f"unknown defense method {name!r}; valid names: {sorted(METHODS)}")
    return METHODS[name]


class Defense(nn.Module):
    """The white-box front of the target: ``x* -> denoiser [-> encoder -> decoder]`` (Fig. 6.1, 6.3).

    The decoder is pre-trained and frozen: it always runs in eval mode and takes no gradient updates; in
    zeroth-order training it belongs to the black box.
    """

    def __init__(self, denoiser: nn.Module, encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        super().__init__()
        if (encoder is None) != (decoder is None):
            raise ValueError("an autoencoder defense needs both an encoder and a decoder")
        self.denoiser = denoiser
        self.encoder = encoder
        self.decoder = decoder
        if decoder is not None:
            decoder.requires_grad_(False).eval()

    @property
    def autoencoder(self) -> bool:
        return self.encoder is not None

    def train(self, mode: bool = True) -> Defense:
        super().train(mode)
        if self.decoder is not None:
            self.decoder.eval()
        return self

    def white_box(self, noisy: Tensor) -> tuple[Tensor, Tensor]:
        """``(denoised, z)``: the denoiser output ``(B, C, H, W)`` and the white-box output (the encoder's
        latent ``(B, d)`` in AE variants, else the denoised image itself)."""
        denoised = self.denoiser(noisy)
        return denoised, (self.encoder(denoised) if self.encoder is not None else denoised)

    def decode(self, z: Tensor) -> Tensor:
        """The image the target sees for white-box output ``z``."""
        return self.decoder(z) if self.decoder is not None else z

    def forward(self, noisy: Tensor) -> Tensor:
        return self.decode(self.white_box(noisy)[1])

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Denoiser and encoder parameters (the decoder is frozen)."""
        yield from self.denoiser.parameters()
        if self.encoder is not None:
            yield from self.encoder.parameters()


def build_defense(
    method: DefenseMethod,
    channels: int,
    image_size: tuple[int, int],
    latent_dim: int,
    denoiser_kwargs: dict | None = None,
    ae_width: int = 32,
) -> Defense:
    """The untrained defense of ``method`` for images ``(channels, *image_size)``.

    Args:
        latent_dim: the AE latent size (Zhang et al. 2022 tie it to the query count: CGE costs 2 x latent_dim).
        denoiser_kwargs: passed to the denoiser (e.g. ``{"depth": 5, "width": 16}`` or ``{"base_width": 8}``).
        ae_width: stem width of the encoder / last width of the decoder.
    """
    denoiser = build_denoiser(method.denoiser, channels, **(denoiser_kwargs or {}))
    if not method.autoencoder:
        return Defense(denoiser)
    encoder = ConvEncoder(channels, latent_dim, image_size, width=ae_width)
    decoder = ConvDecoder(latent_dim, channels, image_size, width=ae_width)
    return Defense(denoiser, encoder, decoder)


class DefenseObjective(Protocol):
    """A loss on target scores: ``batch`` for first-order training, ``per_sample`` for zeroth-order queries.

    ``per_sample(reference, clean, reference).mean()`` equals ``batch(reference, clean)``, so both orders
    optimise the same number.
    """

    def batch(self, scores: Tensor, clean_scores: Tensor) -> Tensor: ...

    def per_sample(self, query_scores: Tensor, clean_scores: Tensor, reference_scores: Tensor) -> Tensor: ...


class StabilityLoss:
    """The STAB term of eq. 6.8: cross-entropy between the target's probabilities on the denoised image and its
    label on the clean image (Salman et al. 2020)."""

    def batch(self, scores: Tensor, clean_scores: Tensor) -> Tensor:
        return cross_entropy_from_probs(scores, clean_scores.argmax(dim=1)).mean()

    def per_sample(self, query_scores: Tensor, clean_scores: Tensor, reference_scores: Tensor) -> Tensor:
        rows = query_scores.shape[0]
        labels = clean_scores.argmax(dim=1).repeat(rows // clean_scores.shape[0])  # block-major rows
        return cross_entropy_from_probs(query_scores, labels)


@dataclass(frozen=True)
class TotalLoss:
    """Eq. 6.13 on black-box probabilities: CE + lambda_CS (1 - cos) + lambda_MMD MMD^2."""

    lambda_cs: float = 1.0
    lambda_mmd: float = 4.0

    def batch(self, scores: Tensor, clean_scores: Tensor) -> Tensor:
        return total_loss(clean_scores, scores, clean_scores, scores, self.lambda_cs, self.lambda_mmd, from_probs=True)

    def per_sample(self, query_scores: Tensor, clean_scores: Tensor, reference_scores: Tensor) -> Tensor:
        return total_loss_per_sample(
            clean_scores,
            query_scores,
            clean_scores,
            query_scores,
            reference_scores,
            self.lambda_cs,
            self.lambda_mmd,
            from_probs=True,
        )


@dataclass(frozen=True)
class Task:
    """What a target task contributes to training: differentiable scores of the target's output (first
    order), the query-only wrapper of a model (zeroth order and clean targets), and the two objectives."""

    name: str
    scores: Callable[[Tensor], Tensor]
    black_box: Callable[[nn.Module], QueryFn]
    stability: Callable[[], DefenseObjective]
    total: Callable[[float, float], DefenseObjective]


CLASSIFICATION = Task(
    "classification",
    scores=lambda logits: torch.softmax(logits, dim=1),
    black_box=BlackBox,
    stability=StabilityLoss,
    total=TotalLoss,
)


def black_box_scores(black_box: QueryFn, images: Tensor, batch_size: int = 1024) -> Tensor:
    """The black box's outputs on clean ``images`` ``(N, ...)``: the training targets of every defense."""
    return torch.cat([black_box(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)])


class DefenseTrainer:
    """One training step of a defense method: :meth:`forward_backward` fills the trainable parameters' ``.grad``.

    In zeroth-order methods the target is reachable only through ``task.black_box`` (for AE variants wrapped
    with the frozen decoder), which refuses inputs that require grad and runs under ``no_grad``; the trainer
    keeps no other reference to the target.

    Args:
        method: the defense method.
        defense: its white-box part (trainable denoiser [+ encoder], frozen decoder).
        target: the frozen target model (classifier or reconstruction network), images in [0, 1] -> output.
        task: scores, black-box wrapper and objectives of the target's task.
        sigma: Gaussian noise level of the training inputs (pixel units).
        q: RGE directions per sample (thesis: 20, 100 or 192).
        mu: ZO smoothing radius (thesis: 0.005).
        lambda_cs, lambda_mmd: weights of eq. 6.13 (thesis: 1 and 4).
        generator: source of the training noise and of the RGE directions.
    """

    def __init__(
        self,
        method: DefenseMethod,
        defense: Defense,
        target: nn.Module,
        task: Task = CLASSIFICATION,
        *,
        sigma: float,
        q: int = 192,
        mu: float = 0.005,
        lambda_cs: float = 1.0,
        lambda_mmd: float = 4.0,
        generator: torch.Generator | None = None,
    ) -> None:
        if sigma < 0 or q < 1 or mu <= 0:
            raise ValueError(f"need sigma >= 0, q >= 1, mu > 0; got sigma={sigma}, q={q}, mu={mu}")
        if method.autoencoder != defense.autoencoder:
            raise ValueError(f"method {method.name} and its defense disagree about the autoencoder")
        self.method, self.defense, self.task = method, defense, task
        self.sigma, self.q, self.mu, self.generator = sigma, q, mu, generator
        if method.objective == "ds":
            self.objective = task.stability()
        else:
            self.objective = task.total(lambda_cs * method.use_cs, lambda_mmd * method.use_mmd)
        target.eval().requires_grad_(False)  # a deployed model: frozen weights and batch-norm statistics
        if method.zeroth_order:
            self.black_box = task.black_box(nn.Sequential(defense.decoder, target) if defense.autoencoder else target)
            self._white_box_target = None
        else:
            self.black_box = None
            self._white_box_target = target

    def noisy(self, clean: Tensor) -> Tensor:
        """``x* = x + eta``, ``eta ~ N(0, sigma^2 I)`` drawn from the trainer's generator."""
        noise = torch.randn(clean.shape, generator=self.generator, device=clean.device, dtype=clean.dtype)
        return clean + self.sigma * noise

    def forward_backward(self, clean: Tensor, clean_scores: Tensor, noisy: Tensor | None = None) -> dict[str, float]:
        """Accumulate the gradient of the method's loss into the trainable parameters; return its terms.

        Args:
            clean: ``(B, C, H, W)`` clean inputs in [0, 1].
            clean_scores: ``(B, K)`` black-box outputs on ``clean`` (the targets).
            noisy: the noisy inputs; drawn with :meth:`noisy` when None.

        Returns:
            ``{"loss", "objective", "mse"}`` as floats (``mse`` is 0 for RUDS), at the unperturbed point.
        """
        noisy = self.noisy(clean) if noisy is None else noisy
        denoised, z = self.defense.white_box(noisy)
        mse = (denoised - clean).pow(2).flatten(1).mean(dim=1).mean() if self.method.objective == "ds" else None
        if self.method.zeroth_order:
            if mse is not None:
                mse.backward(retain_graph=True)  # exact white-box term; the ZO estimate is chained below
            objective = self._zeroth_order_backward(z, clean_scores)
        else:
            scores = self.task.scores(self._white_box_target(self.defense.decode(z)))
            objective = self.objective.batch(scores, clean_scores)
            (objective if mse is None else objective + mse).backward()
            objective = objective.detach()
        mse_value = 0.0 if mse is None else float(mse.detach())
        return {"loss": float(objective) + mse_value, "objective": float(objective), "mse": mse_value}

    def _zeroth_order_backward(self, z: Tensor, clean_scores: Tensor) -> Tensor:
        batch, at_z = z.shape[0], []

        def loss_fn(queries: Tensor) -> Tensor:
            # the whole step is one black-box call whose block 0 is z itself: its scores are MMD's reference
            # batch, its losses the objective at z (and RGE's base of every difference)
            scores = self.black_box(queries)
            losses = self.objective.per_sample(scores, clean_scores, scores[:batch])
            at_z.append(losses[:batch])
            return losses

        if self.method.estimator == "rge":
            grad = rge_gradient(loss_fn, z, self.q, self.mu, self.generator)  # q + 1 queries per sample
        else:
            grad = cge_gradient(loss_fn, z, self.mu, with_center=True)  # 2 d + 1 queries per sample
        zo_backward(z, grad)
        return at_z[0].mean()

    @torch.no_grad()
    def objective_value(self, clean: Tensor, clean_scores: Tensor, noisy: Tensor) -> float:
        """The method's loss (objective + MSE for DS) at fixed noisy inputs, by queries only."""
        query = self.black_box or self.task.black_box(self._white_box_target)
        denoised, z = self.defense.white_box(noisy)
        image = z if self.black_box is not None else self.defense.decode(z)
        value = float(self.objective.batch(query(image), clean_scores))
        if self.method.objective == "ds":
            value += float((denoised - clean).pow(2).flatten(1).mean(dim=1).mean())
        return value


@dataclass(frozen=True)
class TrainSchedule:
    """Optimiser settings (thesis Sec. 6.4: lr 1e-4, divided by 10 every 100 epochs, 600 epochs, batch 256)."""

    epochs: int
    batch_size: int
    lr: float = 1e-4
    lr_step: int = 100
    lr_gamma: float = 0.1
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.lr_step < 1:
            raise ValueError(f"need epochs, batch_size, lr_step >= 1 and lr > 0, got {self}")


def train_defense(
    trainer: DefenseTrainer,
    images: Tensor,
    clean_scores: Tensor,
    schedule: TrainSchedule,
    *,
    generator: torch.Generator | None = None,
    on_epoch: Callable[[int, dict[str, float]], dict[str, float] | None] | None = None,
    progress: bool = True,
    desc: str = "train",
    checkpoint: Path | None = None,
    fingerprint: str = "",
    resume: bool = False,
) -> list[dict[str, float]]:
    """Train ``trainer.defense`` with Adam and a step schedule; return one record per epoch.

    With ``checkpoint`` every epoch is saved there (weights, optimizer, schedule, the generators' and global random
    states, history, ``fingerprint`` in ``meta``); ``resume`` continues from it, so that a killed training ends with
    the same weights as an uninterrupted one (the caller decides with :func:`advreid.reid.engine.resumable_epochs`).

    Args:
        trainer: the method's step.
        images: ``(N, C, H, W)`` clean training inputs in [0, 1].
        clean_scores: ``(N, K)`` black-box outputs on ``images`` (from :func:`black_box_scores`).
        schedule: epochs, batch size and learning-rate schedule.
        generator: shuffles the batches.
        on_epoch: called after each epoch with (epoch, record); the values it returns join the record
            (e.g. a validation accuracy for the training curves, Fig. 6.6).
        progress: show a tqdm bar (rate and ETA) over the steps.

    Returns:
        Per epoch: ``epoch``, mean ``loss``/``objective``/``mse`` over samples, ``queries_per_sample`` (black-box
        images per training image and step; 0 for first order) and the ``on_epoch`` values.
    """
    if images.shape[0] != clean_scores.shape[0]:
        raise ValueError(f"images ({images.shape[0]}) and clean_scores ({clean_scores.shape[0]}) differ in length")
    defense = trainer.defense
    # foreach: one multi-tensor update instead of a Python loop over the denoiser's many small parameters
    optimizer = torch.optim.Adam(
        defense.trainable_parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay, foreach=True
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, schedule.lr_step, schedule.lr_gamma)
    steps_per_epoch = math.ceil(images.shape[0] / schedule.batch_size)
    history: list[dict[str, float]] = []
    if resume:
        if checkpoint is None:
            raise ValueError("resume needs the checkpoint to resume from")
        saved = load_checkpoint(checkpoint, defense, optimizer, scheduler)
        history = list(saved["history"])
        set_rng_state(saved["rng"])
        for generator_, key in ((generator, "shuffle"), (trainer.generator, "trainer")):
            if generator_ is not None:
                generator_.set_state(saved["rng"][key])
    done = len(history)
    bar = show_progress(total=schedule.epochs * steps_per_epoch, initial=done * steps_per_epoch, desc=desc,
                        unit="step", enabled=progress)  # fmt: skip
    for epoch in range(done + 1, schedule.epochs + 1):
        defense.train()
        if trainer.black_box is not None:
            trainer.black_box.reset_counts()
        sums = {"loss": 0.0, "objective": 0.0, "mse": 0.0}
        order = torch.randperm(images.shape[0], generator=generator, device=images.device)
        for start in range(0, images.shape[0], schedule.batch_size):
            index = order[start : start + schedule.batch_size]
            optimizer.zero_grad(set_to_none=True)
            terms = trainer.forward_backward(images[index], clean_scores[index])
            optimizer.step()
            for key in sums:
                sums[key] += terms[key] * index.numel()
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.4f}")
        scheduler.step()
        queries = trainer.black_box.query_count / images.shape[0] if trainer.black_box is not None else 0.0
        record = {"epoch": float(epoch), **{k: v / images.shape[0] for k, v in sums.items()}}
        record["queries_per_sample"] = queries
        if on_epoch is not None:
            record.update(on_epoch(epoch, record) or {})
        history.append(record)
        if checkpoint is not None:
            state = rng_state()
            for generator_, key in ((generator, "shuffle"), (trainer.generator, "trainer")):
                if generator_ is not None:
                    state[key] = generator_.get_state()
            save_checkpoint(checkpoint, defense, optimizer, scheduler, epoch=epoch, history=history, rng=state,
                            meta={"fingerprint": fingerprint})  # fmt: skip
    bar.close()
    return history


def fit_reconstruction(
    model: Callable[[Tensor], Tensor],
    parameters: list[nn.Parameter],
    inputs: Callable[[Tensor], Tensor],
    images: Tensor,
    schedule: TrainSchedule,
    *,
    generator: torch.Generator | None = None,
    progress: bool = True,
    desc: str = "pretrain",
) -> list[float]:
    """Minimise ``||model(inputs(x)) - x||^2`` (mean over pixels) with Adam; return the mean loss per epoch.

    Pre-trains the autoencoder of the AE variants (``inputs`` = identity, Zhang et al. 2022) and, for
    Table 6.5's finetune strategy, the denoiser on plain denoising (``inputs`` adds the Gaussian noise).
    """
    optimizer = torch.optim.Adam(parameters, lr=schedule.lr, weight_decay=schedule.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, schedule.lr_step, schedule.lr_gamma)
    losses = []
    bar = show_progress(total=schedule.epochs, desc=desc, unit="epoch", enabled=progress)
    for _ in range(schedule.epochs):
        total = 0.0
        order = torch.randperm(images.shape[0], generator=generator, device=images.device)
        for start in range(0, images.shape[0], schedule.batch_size):
            batch = images[order[start : start + schedule.batch_size]]
            loss = F.mse_loss(model(inputs(batch)), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * batch.shape[0]
        scheduler.step()
        losses.append(total / images.shape[0])
        bar.update(1)
        bar.set_postfix(mse=f"{losses[-1]:.4f}")
    bar.close()
    return losses


def prepare_defense(
    trainer: DefenseTrainer,
    images: Tensor,
    pretrain: TrainSchedule,
    *,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> dict[str, list[float]]:
    """The pre-training a method needs before :func:`train_defense`: the autoencoder on clean ``images`` (AE
    variants; the decoder is frozen afterwards) and the denoiser on MSE denoising (finetune strategy).

    Returns:
        ``{"autoencoder": losses, "denoiser": losses}`` for the parts that were pre-trained.
    """
    defense, out = trainer.defense, {}
    defense.train()
    if defense.autoencoder:
        defense.decoder.requires_grad_(True).train()
        try:
            out["autoencoder"] = fit_reconstruction(
                lambda x: defense.decoder(defense.encoder(x)),
                [*defense.encoder.parameters(), *defense.decoder.parameters()],
                lambda x: x,
                images,
                pretrain,
                generator=generator,
                progress=progress,
                desc="autoencoder",
            )
        finally:
            defense.decoder.requires_grad_(False).eval()
    if trainer.method.finetune:
        out["denoiser"] = fit_reconstruction(
            defense.denoiser,
            list(defense.denoiser.parameters()),
            trainer.noisy,
            images,
            pretrain,
            generator=generator,
            progress=progress,
            desc="denoiser",
        )
    return out


@torch.no_grad()
def noisy_accuracy(
    defense: Defense,
    black_box: QueryFn,
    images: Tensor,
    labels: Tensor,
    sigma: float,
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
) -> float:
    """Accuracy of ``black_box(defense(x + eta))`` against ``labels``: one noisy draw per image (the training
    curves of Fig. 6.6; the certified accuracy comes from randomized smoothing)."""
    was_training = defense.training
    defense.eval()
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        correct += int(
            (black_box(defense(x + sigma * noise)).argmax(dim=1) == labels[start : start + batch_size]).sum()
        )
    defense.train(was_training)
    return correct / images.shape[0]
