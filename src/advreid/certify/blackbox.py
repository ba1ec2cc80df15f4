"""A query-only view of a classifier: labels and softmax probabilities, never gradients (thesis Sec. 6.3.3).

The defense of chapter 6 may only send inputs to the target model and read its outputs, so every
gradient that reaches the denoiser must come from a zeroth-order estimate. ``BlackBox`` enforces that
at run time and counts the queries so that training budgets (q + 1 per sample for RGE, 2d for CGE)
can be checked.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class BlackBox:
    """Wrap a classifier returning logits ``(N, C)`` so callers see only ``probs`` and ``labels``.

    Args:
        model: the target classifier (an ``nn.Module`` is switched to eval mode: a deployed model's
            batch-norm statistics must not move when it is queried).
        max_batch: inputs larger than this are sent in chunks of at most ``max_batch`` images.
    """

    def __init__(self, model: nn.Module | Callable[[Tensor], Tensor], max_batch: int = 1024) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if isinstance(model, nn.Module):
            model.eval()
        self._model = model
        self.max_batch = max_batch
        self.query_count = 0  # images sent to the model
        self.batch_count = 0  # forward calls made on the model

    def reset_counts(self) -> None:
        """Set ``query_count`` and ``batch_count`` back to zero."""
        self.query_count = 0
        self.batch_count = 0

    def probs(self, x: Tensor) -> Tensor:
        """Softmax probabilities ``(N, C)`` for images ``x`` of shape ``(N, ...)``, detached."""
        if x.requires_grad:
            raise RuntimeError(
                "black box refuses gradient flow: the input requires grad, but a black-box model exposes "
                "only labels and probabilities; estimate the gradient with advreid.certify.zeroth_order"
            )
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(f"black box input must be a non-empty batch (N, ...), got shape {tuple(x.shape)}")
        chunks = []
        with torch.no_grad():
            for start in range(0, x.shape[0], self.max_batch):
                batch = x[start : start + self.max_batch]
                logits = self._model(batch)
                if logits.dim() != 2 or logits.shape[0] != batch.shape[0] or not logits.is_floating_point():
                    raise ValueError(
                        "black box model must return float logits of shape (N, C); got "
                        f"{tuple(logits.shape)} {logits.dtype} for a batch of {batch.shape[0]}"
                    )
                chunks.append(torch.softmax(logits, dim=1))
                self.query_count += batch.shape[0]
                self.batch_count += 1
        return torch.cat(chunks).detach()

    def labels(self, x: Tensor) -> Tensor:
        """Predicted labels ``(N,)`` (argmax of the probabilities)."""
        return self.probs(x).argmax(dim=1)

    def __call__(self, x: Tensor) -> Tensor:
        """Same as :meth:`probs`, so a ``BlackBox`` can be the base classifier of ``Smooth``."""
        return self.probs(x)
