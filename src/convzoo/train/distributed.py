"""Data-parallel training over several processes, as launched by ``torchrun``.

``torchrun --nproc-per-node N -m convzoo train MODEL ...`` starts N copies of
``convzoo train``; each reads the variables torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins one
process group: gloo for CPU tensors, plus NCCL for CUDA tensors where PyTorch has it
(each process then trains on ``cuda:LOCAL_RANK``). The model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`, so gradients are averaged over the
processes (Goyal et al. 2017, "Accurate, Large Minibatch SGD").

What every rank does is decided so that a run on W processes computes what one process
computes with the same *global* batch: the loader splits every global batch of the
epoch's permutation between the ranks, each rank's loss is weighted by its share of the
batch, and with ``--sync-bn`` batch norm uses the statistics of the global batch. What
only one rank does (the run directory, the logs, the checkpoints) is done by rank 0;
what all must agree on (errors at set-up, a stop signal, the time-budget plan, loss
sums, evaluation counts) is exchanged with small collectives.

Nothing is scaled silently: the learning rate is the one given, for the global batch.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConvzooError

__all__ = [
    "DistributedError",
    "LaunchEnv",
    "Processes",
    "CPUSyncBatchNorm",
    "SetupFailed",
    "convert_sync_batchnorm",
    "current",
    "global_batch_line",
    "global_batch_size",
    "launch_env",
    "rank_seed",
    "session",
    "shard_bounds",
]

TIMEOUT_ENV = "CONVZOO_DIST_TIMEOUT"  # seconds a collective (and joining) may wait
DEFAULT_TIMEOUT = 1800.0  # PyTorch's own default for gloo
T = TypeVar("T")


class DistributedError(ConvzooError):
    """The launch environment is unusable, or the process group cannot be joined."""


class SetupFailed(ConvzooError):
    """Set-up failed on at least one rank; raised on every rank so that all stop.

    ``show`` is true on the rank that should print the message (rank 0, which reports
    every rank's error); ``exit_code`` is 2 when every failure was a user mistake, else 1.
    """

    def __init__(self, message: str, *, exit_code: int = 2, show: bool = True) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.show = show


# ---------------------------------------------------------------------------------------
# The launch environment


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process stands among the ones torchrun (or a cluster) started."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int


def launch_env(environ: dict[str, str] | None = None) -> LaunchEnv | None:
    """The torchrun variables of this process, or None when it was not launched so.

    A process counts as launched when ``RANK`` and ``WORLD_SIZE`` are both set.
    Raises DistributedError for values that cannot be used.
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None

    def number(name: str, default: str | None = None) -> int:
        text = env.get(name, default)
        if text is None:
            raise DistributedError(
                f"{name} is not set, but RANK and WORLD_SIZE are: launch with torchrun, "
                "which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT"
            )
        try:
            return int(text)
        except ValueError:
            raise DistributedError(f"{name} must be a whole number, got {text!r}") from None

    world = number("WORLD_SIZE")
    rank = number("RANK")
    local_rank = number("LOCAL_RANK", env.get("RANK"))
    local_world = number("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE"))
    if world < 1:
        raise DistributedError(f"WORLD_SIZE must be at least 1, got {world}")
    if not 0 <= rank < world:
        raise DistributedError(f"RANK {rank} is not in 0..{world - 1} (WORLD_SIZE {world})")
    if local_world < 1 or not 0 <= local_rank < local_world:
        raise DistributedError(
            f"LOCAL_RANK {local_rank} is not in 0..{local_world - 1} (LOCAL_WORLD_SIZE {local_world})"
        )
    addr = env.get("MASTER_ADDR")
    if not addr:
        raise DistributedError("MASTER_ADDR is not set (torchrun sets it; so must a job script)")
    port = number("MASTER_PORT")
    if not 0 < port < 65536:
        raise DistributedError(f"MASTER_PORT must be a port number, got {port}")
    return LaunchEnv(rank, world, local_rank, local_world, addr, port)


def timeout_seconds(environ: dict[str, str] | None = None) -> float:
    """How long joining the group, or one collective, may wait (``$CONVZOO_DIST_TIMEOUT``)."""
    env = os.environ if environ is None else environ
    text = env.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------
# The process group


class Processes:
    """The processes of a run and the few collectives the training loop needs.

    With one process (``enabled`` false) every method is a cheap no-op that returns its
    input, so the loop calls them unconditionally.
    """

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        local_world_size: int = 1,
        *,
        enabled: bool = False,
    ) -> None:
        self.rank, self.world_size = rank, world_size
        self.local_rank, self.local_world_size = local_rank, local_world_size
        self.enabled = enabled

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one that writes files and prints."""
        return self.rank == 0

    def __repr__(self) -> str:
        if not self.enabled:
            return "Processes(single)"
        return (
            f"Processes(rank={self.rank}, world_size={self.world_size}, "
            f"local_rank={self.local_rank}, backend={dist.get_backend()})"
        )

    @property
    def backend(self) -> str | None:
        return str(dist.get_backend()) if self.enabled else None

    def _device(self) -> torch.device:
        """Where small collective tensors live: the CPU when gloo is in the group."""
        backend = str(dist.get_backend())
        if "gloo" in backend or backend.startswith("cpu"):
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device())

    # -- collectives ------------------------------------------------------------------

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """The elementwise sum (or "max") of ``tensor`` over all ranks, as a new tensor
        on ``tensor``'s device."""
        if not self.enabled:
            return tensor
        where = self._device()
        buf = tensor.detach().to(where, copy=True)
        dist.all_reduce(buf, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return buf.to(tensor.device)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def main_says(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (for decisions taken on timings)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(bool(flag)) if self.is_main else 0], dtype=torch.int64)
        return bool(self.all_reduce(t, "max")[0])

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def agree(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank; if it raised on any, stop every rank.

        The ranks exchange their errors, so that an error on one rank (a data folder
        missing on one machine) ends all of them at once with the message instead of
        leaving the others waiting. Rank 0 reports every rank's error; a rank that
        failed itself re-raises an internal error (for its traceback).
        """
        try:
            value, error = fn(), None
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            value, error = None, exc
        if not self.enabled:
            if error is not None:
                raise error
            return value  # type: ignore[return-value]
        mine = None
        if error is not None:
            text = str(error) if isinstance(error, ConvzooError) else _describe(error)
            mine = (text, isinstance(error, ConvzooError))
        reports = self.all_gather_object(mine)
        failed = [(r, rep) for r, rep in enumerate(reports) if rep is not None]
        if not failed:
            return value  # type: ignore[return-value]
        user_mistake = all(rep[1] for _, rep in failed)
        if error is not None and not isinstance(error, ConvzooError):
            raise error  # an internal failure: this rank keeps its traceback
        messages = {rep[0] for _, rep in failed}
        if self.is_main and error is not None and len(failed) == 1:
            raise error
        if len(messages) == 1 and len(failed) == self.world_size:
            message = next(iter(messages))
        else:
            by_message: dict[str, list[int]] = {}
            for r, rep in failed:
                by_message.setdefault(rep[0], []).append(r)
            message = "; ".join(
                f"{'rank' if len(ranks) == 1 else 'ranks'} {', '.join(map(str, ranks))}: {text}"
                for text, ranks in by_message.items()
            )
        raise SetupFailed(message, exit_code=2 if user_mistake else 1, show=self.is_main)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


_ACTIVE: list[Processes] = []


def current() -> Processes:
    """The processes of the run in progress (a single-process stand-in outside one)."""
    return _ACTIVE[-1] if _ACTIVE else Processes()


F = TypeVar("F", bound=Callable[..., Any])


def rank_zero_only(fn: F) -> F:
    """``fn`` runs on rank 0 only (every process of a one-process run is rank 0);
    elsewhere it does nothing and returns None."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if current().is_main:
            return fn(*args, **kwargs)
        return None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def session() -> Iterator[Processes]:
    """Join the process group torchrun describes for the duration of the block.

    Without torchrun's variables this yields a single-process stand-in. A group that is
    already initialised (by an enclosing session, or by the caller's own code) is used
    as it is and left for its owner to destroy. On CUDA machines each process is bound
    to ``cuda:LOCAL_RANK`` before the group is formed.
    """
    if dist.is_available() and dist.is_initialized():
        if _ACTIVE:
            yield _ACTIVE[-1]
            return
        env = launch_env()
        if env is not None:
            local_rank, local_world = env.local_rank, env.local_world_size
        else:  # a group the caller formed without torchrun's variables
            cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
            local_rank = torch.cuda.current_device() if cuda else 0
            local_world = dist.get_world_size()  # at most this many share the machine
        procs = Processes(
            dist.get_rank(), dist.get_world_size(), local_rank, local_world, enabled=True
        )
        _ACTIVE.append(procs)
        try:
            yield procs
        finally:
            _ACTIVE.pop()
        return
    env = launch_env()
    if env is None:
        procs = Processes()
        _ACTIVE.append(procs)
        try:
            yield procs
        finally:
            _ACTIVE.pop()
        return
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed")
    timeout = timeout_seconds()
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        backend = "cpu:gloo,cuda:nccl"
        if env.local_rank < torch.cuda.device_count():
            torch.cuda.set_device(env.local_rank)
    try:
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            timeout=datetime.timedelta(seconds=timeout),
        )
    except Exception as exc:  # noqa: BLE001 - DistNetworkError, RuntimeError, TimeoutError
        raise DistributedError(
            f"rank {env.rank} could not join the {env.world_size} processes at "
            f"{env.master_addr}:{env.master_port} within {timeout:g}s: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    procs = Processes(env.rank, env.world_size, env.local_rank, env.local_world_size, enabled=True)
    _ACTIVE.append(procs)
    try:
        yield procs
        # Leave together: a rank that tears gloo down while rank 0 is still writing the
        # run directory can abort at exit ("terminate called without an active exception").
        with contextlib.suppress(Exception):
            dist.barrier()
    finally:
        _ACTIVE.pop()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------
# Sharding and seeds


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous piece ``[lo, hi)`` of ``n`` items split ``world_size``
    ways; the first ``n % world_size`` pieces have one item more (as
    ``torch.tensor_split``). The pieces are disjoint and cover ``0..n-1``; some are
    empty when ``n < world_size``."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + int(rank < extra)


def global_batch_size(num_images: int, batch_size: int, index: int) -> int:
    """Images in global batch ``index`` of an epoch of ``num_images`` (all ranks together)."""
    return max(0, min(batch_size, num_images - index * batch_size))


def global_batch_line(batch_size: int, world_size: int) -> str:
    """'global batch 256 = 2 ranks x 128' (or 'x 33-34' when it does not divide)."""
    base, extra = divmod(batch_size, world_size)
    per = f"{base}" if extra == 0 else f"{base}-{base + 1}"
    ranks = "rank" if world_size == 1 else "ranks"
    return f"global batch {batch_size} = {world_size} {ranks} x {per}"


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s global RNG (dropout); rank 0 keeps ``seed`` itself, so
    that a one-process run is seeded as it always was."""
    if rank == 0:
        return seed
    state = np.random.SeedSequence([seed % 2**64, 0x52414E4B, rank]).generate_state(2, np.uint32)
    return ((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def data_signature(*tensors: torch.Tensor) -> str:
    """A short fingerprint of the data (labels in full, a sample of the pixels), so that
    ranks that found different copies of a dataset notice before training."""
    h = hashlib.blake2b(digest_size=8)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(repr((tuple(t.shape), str(t.dtype))).encode())
        flat = t.reshape(-1)
        if flat.numel() > 1_000_000:
            flat = flat[:: max(1, flat.numel() // 1_000_000)]
        h.update(flat.numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# Batch norm over the global batch


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm whose statistics are those of the batch of every rank together.

    Forward: per-channel sums of x and x^2 are all-reduced (in float64) to the global
    mean and biased variance. Backward: the per-channel sums of dy and dy * x_hat are
    all-reduced, so that each rank gets its part of the gradient of the sum of every
    rank's loss (the usual SyncBN backward, as in torch.nn.SyncBatchNorm). Gradients of
    the weight and bias stay local: DistributedDataParallel averages them.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, procs):
        c = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        xd = x.double()
        local = torch.cat(
            [
                xd.sum(dims),
                (xd * xd).sum(dims),
                torch.tensor([x.numel() / max(c, 1)], dtype=torch.float64),
            ]
        )
        total = procs.all_reduce(local)
        count = float(total[-1])
        if count <= 1 and running_mean is not None:
            raise ValueError(
                f"batch norm needs more than one value per channel over all ranks, got {count:g}"
            )
        mean = total[:c] / count
        var = (total[c : 2 * c] / count - mean * mean).clamp_min(0)
        invstd = (var + eps).rsqrt()
        shape = [1, c] + [1] * (x.dim() - 2)
        xhat = ((xd - mean.view(shape)) * invstd.view(shape)).to(x.dtype)
        y = xhat
        if weight is not None:
            y = y * weight.view(shape)
        if bias is not None:
            y = y + bias.view(shape)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                unbiased = var * count / max(count - 1, 1)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        ctx.save_for_backward(xhat, weight, invstd.to(x.dtype))
        ctx.count = count
        ctx.procs = procs
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        xhat, weight, invstd = ctx.saved_tensors
        c = xhat.shape[1]
        dims = [d for d in range(xhat.dim()) if d != 1]
        shape = [1, c] + [1] * (xhat.dim() - 2)
        sum_dy = dy.sum(dims)
        sum_dy_xhat = (dy * xhat).sum(dims)
        grad_weight = sum_dy_xhat if weight is not None else None
        grad_bias = sum_dy if ctx.has_bias else None
        both = ctx.procs.all_reduce(torch.cat([sum_dy, sum_dy_xhat]).double())
        mean_dy = (both[:c] / ctx.count).to(dy.dtype)
        mean_dy_xhat = (both[c:] / ctx.count).to(dy.dtype)
        scale = invstd if weight is None else invstd * weight
        dx = (dy - mean_dy.view(shape) - xhat * mean_dy_xhat.view(shape)) * scale.view(shape)
        return dx, grad_weight, grad_bias, None, None, None, None, None


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch for CPU processes (gloo).

    PyTorch's :class:`torch.nn.SyncBatchNorm` needs GPU tensors (and DDP refuses it on
    the CPU), so CPU runs get this instead; CUDA runs get PyTorch's. In training mode
    with several processes the statistics are those of every rank's batch together
    (:class:`_SyncBatchNormFunction`); in eval mode, or with one process, it is plain
    batch norm. Its state_dict is that of BatchNorm, so checkpoints load into the
    unconverted model.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:  # noqa: A002 - torch's name
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        tracked = not self.training or self.track_running_stats
        running_mean = self.running_mean if tracked else None
        running_var = self.running_var if tracked else None
        procs = current()
        if bn_training and self.training and procs.enabled and procs.world_size > 1:
            return _SyncBatchNormFunction.apply(
                input, self.weight, self.bias, running_mean, running_var, self.eps, factor, procs
            )
        return nn.functional.batch_norm(
            input, running_mean, running_var, self.weight, self.bias, bn_training, factor, self.eps
        )


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> tuple[nn.Module, int]:
    """Replace every BatchNorm*d of ``model`` by a synchronised one sharing its parameters
    and buffers: :class:`torch.nn.SyncBatchNorm` on CUDA, :class:`CPUSyncBatchNorm` on
    the CPU. Returns the model and how many layers were converted."""
    if device.type != "cpu":
        before = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        return nn.SyncBatchNorm.convert_sync_batchnorm(model), before
    count = 0

    def convert(module: nn.Module) -> nn.Module:
        nonlocal count
        out = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, CPUSyncBatchNorm
        ):
            out = CPUSyncBatchNorm(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
            )
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            count += 1
        for name, child in module.named_children():
            out.add_module(name, convert(child))
        return out

    return convert(model), count
