"""Training a chapter-5 defense from the vanilla model: PGD-AT (Madry et al.), L_Tot w/o meta-learning
(Algorithm 2 on task PA) and MP-SNN (Algorithm 3 with Algorithm-2 updates), with its ablations by settings.

Training runs on :class:`advreid.reid.engine.ReIDEngine` (epochs, one checkpoint per epoch, exact resume on CPU);
:class:`DefenseEngine` only replaces its step. The defended model file holds the vanilla model's meta, the
defense settings (so :func:`load_defended_model` rebuilds vanilla architecture + noise) and the state dict.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from advreid.data.torch_data import ManifestImages, PKSampler, dataset_info, load_split
from advreid.defense.evaluation import EvalProtocol
from advreid.defense.losses import TASKS, LossSettings, vanilla_loss
from advreid.defense.meta import (
    ALTERNATE,
    PGDSettings,
    adversarial_images,
    loss_step,
    make_meta_batch,
    meta_step,
    parameter_groups,
    task_loss,
)
from advreid.defense.noise import NoiseConfig, StochasticReIDModel, build_stochastic_model
from advreid.io import load_torch
from advreid.models.reid import build_reid_model
from advreid.params import ParamsError, build
from advreid.reid.checkpoint import load_trained_model
from advreid.reid.engine import LAST_CHECKPOINT, ReIDEngine, resumable_epochs, save_checkpoint, seed_everything, train

METHODS = ("pgd_at", "l_tot", "mp_snn")


@dataclass(frozen=True)
class DefenseSettings:
    """One defense: ``method`` (pgd_at | l_tot | mp_snn), which noises (``isotropic``, ``anisotropic``), ``fca``,
    and the optimisation (thesis: alpha 1e-5 for (theta, phi_a), beta 3e-4 for phi, SGD momentum 0.9, wd 1e-5)."""

    method: str = "mp_snn"
    isotropic: bool = True
    anisotropic: bool = True
    fca: bool = True
    epochs: int = 60
    p: int = 4
    k: int = 4
    alpha: float = 1e-5
    beta: float = 3e-4
    momentum: float = 0.9
    weight_decay: float = 1e-5
    lambda_r: float = 1e-4
    eta: float = 0.5
    label_smoothing: float = 0.1
    margin: float = 0.3
    pgd_eps: float = 8.0  # 1/255
    pgd_step: float = 2.0  # 1/255
    pgd_steps: int = 7
    pgd_random_start: bool = True
    iso_init: float = 0.25
    iso_min: float = 0.01
    iso_shape: str = "chw"
    noise_draw: str = "per_sample"
    alternate: str = "sequential"
    meta_order: int = 1
    flip: bool = True
    seed: int = 0

    def check(self, where: str) -> DefenseSettings:
        if self.method not in METHODS:
            raise ValueError(f"{where}.method: must be one of {list(METHODS)}, got {self.method!r}")
        if self.method == "pgd_at" and (self.isotropic or self.anisotropic):
            raise ValueError(f"{where}: pgd_at is noise-free; set isotropic and anisotropic to false")
        if self.method != "pgd_at" and not (self.isotropic or self.anisotropic):
            raise ValueError(f"{where}: {self.method} needs at least one of isotropic / anisotropic noise")
        if self.alternate not in ALTERNATE:
            raise ValueError(f"{where}.alternate: must be one of {list(ALTERNATE)}, got {self.alternate!r}")
        if self.meta_order not in (1, 2):
            raise ValueError(f"{where}.meta_order: must be 1 or 2, got {self.meta_order}")
        if self.method == "mp_snn" and self.p < 4:
            raise ValueError(f"{where}.p: the meta split needs P >= 4 identities per batch, got {self.p}")
        for name in ("epochs", "p", "pgd_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.k < 2:
            raise ValueError(f"{where}.k: the triplet loss needs K >= 2, got {self.k}")
        for name in ("alpha", "beta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{where}.{name}: must be > 0, got {getattr(self, name)}")
        for name in ("pgd_eps", "pgd_step", "momentum", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{where}.{name}: must be >= 0, got {getattr(self, name)}")
        self.loss().check(where)
        self.noise().check(where)
        return self

    def loss(self) -> LossSettings:
        return LossSettings(self.lambda_r, self.eta, self.fca, self.label_smoothing, self.margin)

    def noise(self) -> NoiseConfig:
        return NoiseConfig(
            self.isotropic, self.anisotropic, self.iso_init, self.iso_min, self.iso_shape, self.noise_draw
        )

    def pgd(self) -> PGDSettings:
        return PGDSettings(self.pgd_eps / 255, self.pgd_step / 255, self.pgd_steps, self.pgd_random_start)


@dataclass(frozen=True)
class DefenseParams:
    """The ``defense`` section: the vanilla model, the defenses (train and evaluate lists), settings."""

    model: str
    defenses: tuple[str, ...]
    evaluate: dict = field(default_factory=dict)  # name -> model file (vanilla: the train_reid model)
    train: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    replicates: dict = field(default_factory=dict)  # advreid.defense.replicates.ReplicateSettings fields

    def protocol(self) -> EvalProtocol:
        """``eval`` as the checked evaluation protocol; a bad key is a ParamsError naming it."""
        try:
            return build(EvalProtocol, self.eval, "defense.eval").check("defense.eval", self.evaluate)
        except ValueError as err:
            raise ParamsError(str(err)) from err

    def settings(self, name: str) -> DefenseSettings:
        if name not in self.defenses or name not in self.variants:
            raise ParamsError(f"defense: unknown defense {name!r}; defense.defenses: {list(self.defenses)}")
        where = f"defense.variants.{name}"
        values = {**self.train, **self.variants[name]}
        try:
            return build(DefenseSettings, values, where).check(where)
        except ParamsError:
            raise
        except ValueError as err:
            raise ParamsError(str(err)) from err


def build_optimizer(model: StochasticReIDModel, settings: DefenseSettings) -> torch.optim.SGD:
    """SGD with the two groups of Algorithm 2: (theta, phi_a) at alpha, phi at beta (weight decay on both)."""
    theta_phi_a, phi = parameter_groups(model)
    return torch.optim.SGD(
        [{"params": theta_phi_a, "lr": settings.alpha}, {"params": phi, "lr": settings.beta}],
        lr=settings.alpha,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )


class DefenseEngine(ReIDEngine):
    """:class:`ReIDEngine` whose step is the defense's: PGD-AT, Algorithm 2 on L_Tot, or Algorithm 3."""

    def __init__(self, model, optimizer, scheduler=None, *, device, defense: DefenseSettings, epoch_source, **kw):
        super().__init__(model, optimizer, scheduler, device=device, **kw)
        self.defense, self.epoch_source = defense, epoch_source

    def forward_backward(self, batch: Sequence[Any]) -> dict[str, float]:
        model, settings = self.model, self.defense
        images = batch[0].to(self.device)
        labels = batch[1].to(self.device)
        loss_settings, pgd = settings.loss(), settings.pgd()
        epoch = self.epoch_source.epoch + 1  # tau_e of r(phi): the 1-based current epoch
        if settings.method == "mp_snn":
            task = TASKS[int(torch.randint(len(TASKS), ()))]  # Algorithm 3 step 2, from the checkpointed generator
            meta_batch = make_meta_batch(model, images, labels, task, pgd)
            loss = meta_step(
                model, self.optimizer, meta_batch, loss_settings, epoch, settings.meta_order, settings.alternate
            )
            return {"loss": loss, **{f"task_{t}": float(t == task) for t in TASKS}}
        adversarial = adversarial_images(model, images, labels, pgd)
        if settings.method == "pgd_at":

            def loss_fn() -> torch.Tensor:  # L_V(x) + eta L_V(x_adv) (spec B10)
                clean = vanilla_loss(model(images), labels, loss_settings)
                return clean + settings.eta * vanilla_loss(model(adversarial), labels, loss_settings)

        else:

            def loss_fn() -> torch.Tensor:
                return task_loss(model, "PA", images, labels, loss_settings, epoch, adversarial)

        return {"loss": loss_step(model, self.optimizer, loss_fn, settings.alternate)}


@dataclass
class DefendedModel:
    """What :func:`train_defense` returns."""

    model: StochasticReIDModel
    history: list[dict[str, float]]
    meta: dict[str, Any]
    resumed_from: int


def train_defense(
    name: str,
    settings: DefenseSettings,
    vanilla_path: str | Path,
    expected_arch: str,
    source_dir: str | Path,
    checkpoint_dir: str | Path | None,
    *,
    device: torch.device,
    root: str | Path = ".",
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> DefendedModel:
    """Fine-tune the vanilla model of ``vanilla_path`` (architecture ``expected_arch``) into defense ``name`` on the
    train split of ``source_dir``, resuming an unfinished checkpoint written with the same settings."""
    root = Path(root)
    vanilla, vanilla_meta = load_trained_model(vanilla_path, device)
    if vanilla_meta["arch"] != expected_arch:
        raise ValueError(
            f"{vanilla_path}: a {vanilla_meta['arch']!r} checkpoint, but the params name architecture {expected_arch!r}"
        )
    frame, raw_root = load_split(source_dir, "train", root)
    info = dataset_info(source_dir)
    size = (vanilla_meta["height"], vanilla_meta["width"])
    dataset = ManifestImages(frame, raw_root, relabel=True, size=size, transform=_flip if settings.flip else None)
    if dataset.num_classes != vanilla_meta["num_classes"]:
        raise ValueError(
            f"{vanilla_path}: trained on {vanilla_meta['num_classes']} identities, "
            f"{source_dir} has {dataset.num_classes}"
        )
    seed_everything(settings.seed)
    model = build_stochastic_model(vanilla, settings.noise(), size, seed=settings.seed).train()
    config = {
        "name": name,
        "settings": asdict(settings),
        "vanilla": vanilla_meta.get("fingerprint"),
        "source_train_sha256": info["splits"]["train"]["sha256"],
    }
    meta = {
        **{key: vanilla_meta[key] for key in ("arch", "num_classes", "feature_dim", "height", "width", "source")},
        "defense": name,
        "settings": asdict(settings),
        "fingerprint": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
    }
    resumed_from = 0
    if checkpoint_dir is not None:
        resumed_from = resumable_epochs(
            Path(checkpoint_dir) / LAST_CHECKPOINT,
            meta["fingerprint"],
            settings.epochs,
            stage="train_defense",
            written_with="settings, data or vanilla model",
        )
    optimizer = build_optimizer(model, settings)
    sampler = PKSampler(dataset.labels, settings.p, settings.k, settings.seed)
    loader = DataLoader(
        dataset,
        batch_size=settings.p * settings.k,
        sampler=sampler,
        generator=torch.Generator().manual_seed(settings.seed),
    )
    history = train(
        model,
        loader,
        sampler,
        optimizer,
        None,
        settings.epochs,
        checkpoint_dir,
        device=device,
        on_epoch_end=on_epoch_end,
        engine_cls=DefenseEngine,
        meta=meta,
        defense=settings,
        epoch_source=sampler,
    )
    return DefendedModel(model.eval(), history, meta, resumed_from)


def save_defended_model(path: str | Path, defended: DefendedModel) -> None:
    """Write the defended model file (the one format :func:`load_defended_model` reads), atomically."""
    save_checkpoint(path, defended.model, epoch=len(defended.history), history=defended.history, meta=defended.meta)


def load_defended_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[StochasticReIDModel, dict]:
    """The model written by :func:`save_defended_model`: vanilla architecture + noise config + state dict, in eval
    mode (noise on) on ``device``, and its meta."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the train_defense stage for this defense first")
    checkpoint = load_torch(path, "train_defense model file")
    meta = checkpoint.get("meta") or {}
    if "settings" not in meta or "arch" not in meta:
        raise ValueError(f"{path}: not a train_defense model file (meta lacks settings / arch)")
    settings = DefenseSettings(**meta["settings"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no pretrained_path given.*")
        vanilla = build_reid_model(meta["arch"], meta["num_classes"])
    model = build_stochastic_model(vanilla, settings.noise(), (meta["height"], meta["width"]))
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), meta


def _flip(image: torch.Tensor) -> torch.Tensor:
    """Random horizontal flip with probability 1/2 (torch's global generator, checkpointed)."""
    return image.flip(2) if bool(torch.rand(()) < 0.5) else image
