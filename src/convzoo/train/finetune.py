"""Fine-tuning pretrained weights: a frozen backbone for the first epochs, and batch
norm that keeps its statistics.

:class:`Finetuning` is a callback. While the backbone is frozen (the first
``freeze_epochs`` epochs) only the classifier (:func:`~.optim.classifier_prefix`)
learns: the backbone's parameters need no gradient, so its backward pass is skipped,
and its batch norm layers run in evaluation mode. With ``freeze_bn`` the backbone's
batch norm always uses its running statistics and never updates them, the usual
remedy for batches too small to estimate them (Ioffe 2017, "Batch Renormalization",
section 1; torchvision's detection models freeze them likewise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from .callbacks import Callback
from .optim import classifier_prefix

if TYPE_CHECKING:
    from .trainer import Trainer


class Finetuning(Callback):
    """Freeze the backbone for ``freeze_epochs`` epochs; keep its batch norm in
    evaluation mode while frozen, and always with ``freeze_bn``."""

    def __init__(self, freeze_epochs: int, freeze_bn: bool, say: Callable[[str], None]) -> None:
        self.freeze_epochs = freeze_epochs
        self.freeze_bn = freeze_bn
        self.say = say
        self.frozen = False
        self.hooks: list = []

    def on_train_start(self, t: Trainer) -> None:
        head = classifier_prefix(t.model)
        self.backbone = [p for n, p in t.model.named_parameters() if not n.startswith(head)]
        norms = [m for n, m in t.model.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and not (n + ".").startswith(head)]  # fmt: skip
        self.hooks = [m.register_forward_pre_hook(self._norm_mode) for m in norms]
        if t.epoch < self.freeze_epochs:
            self._set_frozen(True)
            self.say(f"backbone frozen for {self.freeze_epochs} epoch(s): only {head[:-1]} learns")
        if self.freeze_bn and norms:
            self.say(f"batch norm statistics frozen in {len(norms)} backbone layers")

    def _norm_mode(self, module: nn.Module, args) -> None:
        if module.training and (self.freeze_bn or self.frozen):
            module.training = False  # model.train() sets it back at the next epoch

    def _set_frozen(self, frozen: bool) -> None:
        self.frozen = frozen
        for p in self.backbone:
            p.requires_grad_(not frozen)

    def on_epoch_end(self, t: Trainer, row: dict) -> None:
        if self.frozen and t.epoch >= self.freeze_epochs:
            self._set_frozen(False)
            self.say(f"backbone unfrozen after epoch {t.epoch}")

    def on_train_end(self, t: Trainer, result: dict) -> None:
        self._remove()

    def on_exception(self, t: Trainer, exc: BaseException) -> None:
        self._remove()

    def _remove(self) -> None:
        """The model as it was: every parameter trainable, no hook left."""
        if self.frozen:
            self._set_frozen(False)
        for h in self.hooks:
            h.remove()
        self.hooks = []
