"""The measurements a time budget plans from, taken on a trainer's real model and data
(:class:`convzoo.train.budget.BudgetProbe`)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..artifacts import save_checkpoint
from .budget import BudgetProbe
from .distributed import global_batch_size
from .ema import EMA
from .rng import rng_state, set_rng_state

if TYPE_CHECKING:
    from .trainer import Trainer


def budget_probe(t: Trainer) -> BudgetProbe:
    return BudgetProbe(lambda: probe_steps(t), lambda: probe_eval(t), lambda: probe_save(t))


def probe_steps(t: Trainer) -> Iterator[float]:
    """Seconds of each of a series of steps at a low learning rate, with an optimizer
    (and EMA) of their own; once closed, the weights and RNG are as before: the probe
    is not part of the run."""
    model_state = copy.deepcopy(t.model.state_dict())
    rng = rng_state()
    optimizer = t.new_optimizer()
    ema = EMA(t.model, t.cfg.ema) if t.ema is not None else None
    scaler_state = t.scaler.state_dict() if t.scaler is not None else None
    lr = t.cfg.lr / 25
    try:
        for epoch in range(1000):
            for b, (x, y) in enumerate(t.loaders.train.epoch(epoch)):
                t0 = time.perf_counter()
                n_global = global_batch_size(t.data.num_train, t.cfg.batch_size, b)
                t.train_step(x, y, lr, n_global, optimizer=optimizer, ema=ema)
                t.sync()
                yield time.perf_counter() - t0
    finally:
        t.model.load_state_dict(model_state)
        if scaler_state is not None:
            t.scaler.load_state_dict(scaler_state)
        set_rng_state(rng)


def probe_eval(t: Trainer) -> tuple[int, float]:
    """(images, seconds) of an evaluation of a few training images, after a warm-up
    pass (the test set is only used once, at the end)."""
    from ..data.loader import Loader
    from ..evaluate import evaluate

    n = min(t.data.num_train, t.loaders.eval_batch)
    probe = Loader(
        t.data.train_x[:n], t.data.train_y[:n], batch_size=t.loaders.eval_batch, **t.loaders.common
    )
    evaluate(t.model, probe, t.data.ds.num_classes)
    t0 = time.perf_counter()
    evaluate(t.model, probe, t.data.ds.num_classes)
    t.sync()
    return n, time.perf_counter() - t0


def probe_save(t: Trainer) -> float:
    """Seconds to write a checkpoint (about the model's size twice, and the EMA)."""
    t0 = time.perf_counter()
    path = t.ck_dir / ".probe.pt"
    weights = t.model.state_dict()
    ema = t.ema.module.state_dict() if t.ema is not None else None
    save_checkpoint({"model": weights, "optimizer": weights, "ema": ema}, path)
    path.unlink()
    return time.perf_counter() - t0
