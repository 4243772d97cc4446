"""Data-parallel `convzoo train` over two CPU processes (gloo), as torchrun starts it.

The two-process runs start the real command (``convzoo.cli.main(["train", ...])``) in
two fresh processes that get the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT); one test launches through torchrun itself.
Hooks installed in those processes record a digest of the weights after every step and
the training images each rank was given.

The weights are compared with a one-process run of the same global batch and seed. NiN
is used there with its dropout off: it has no batch norm (plain batch norm would use
per-rank batch statistics; --sync-bn is checked separately, in float64, where the
gradients must agree to rounding) and no dropout (each rank draws its own masks). Flip
and crop augmentation stay on: the loader draws them for the whole global batch, so they
do not depend on the number of ranks.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_idx_dataset

from convzoo.artifacts import load_checkpoint
from convzoo.cli import main
from convzoo.registry import model_from_checkpoint
from convzoo.train import TrainConfig, train
from convzoo.train.distributed import global_batch_line, launch_env, shard_bounds

HARD_TIMEOUT = 150  # seconds a two-process run may take before the test fails
CTX = multiprocessing.get_context("spawn")
STEPS = 12  # 192 images / global batch 32 = 6 steps an epoch, 2 epochs
COMMON = dict(
    model="nin",
    model_options={"dropout": 0.0},
    width=0.125,
    limit_train=192,
    val_size=81,  # odd, so the shards differ in size
    batch_size=32,
    epochs=2,
    lr=0.05,
    deterministic=True,
    flip=True,
    crop_padding=2,
    ema=0.9,
    save_every_steps=4,
)

# Every test here starts processes that join a process group: the slow lane.
pytestmark = pytest.mark.slow


def cli_args(data_dir, **extra) -> list[str]:
    """The command-line form of COMMON (plus ``extra`` options)."""
    args = ["nin", "--model-option", "dropout=0", "--width", "0.125", "--limit-train", "192",
            "--val-size", "81", "--batch-size", "32", "--epochs", "2", "--lr", "0.05",
            "--deterministic", "--flip", "--crop-padding", "2", "--ema", "0.9",
            "--save-every-steps", "4", "--data-dir", str(data_dir)]  # fmt: skip
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


# ---------------------------------------------------------------------------------------
# Two processes, as torchrun starts them


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _rng_digest(state: torch.Tensor) -> str:
    return hashlib.sha1(state.numpy().tobytes()).hexdigest()


def _worker(rank: int, world: int, port: int, argv: list[str], opts: dict) -> None:
    """One rank: torchrun's variables, the test hooks, then `convzoo train`."""
    out_dir = Path(opts["record"])
    log = os.open(out_dir / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        CONVZOO_DIST_TIMEOUT="60",
        CONVZOO_RECIPES=opts["recipes"],
        OMP_NUM_THREADS="1",
    )
    os.chdir(opts["cwd"][rank])
    torch.set_num_threads(1)

    from convzoo.data.loader import Loader
    from convzoo.train.budget import TimeBudget
    from convzoo.train.trainer import Trainer

    record: dict = {"digests": [], "indices": [], "rng": []}
    prepare, train_step = Loader._prepare, Trainer.train_step

    def recording_prepare(self, idx, epoch, b, share=None):
        if self.shuffle:  # the training loader; evaluation loaders do not shuffle
            lo, hi = share if share is not None else (0, len(idx))
            record["indices"].append([epoch, b, idx[lo:hi].tolist()])
        return prepare(self, idx, epoch, b, share)

    def recording_step(self, *args, **kwargs):
        record["rng"].append(_rng_digest(torch.get_rng_state()))
        result = train_step(self, *args, **kwargs)
        record["digests"].append(_digest(self.model))
        if opts.get("signal_at") == [rank, len(record["digests"])]:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    Loader._prepare = recording_prepare
    Trainer.train_step = recording_step
    # A time budget counts from the planning, not from the start of this (test) process:
    # on a busy machine starting Python and PyTorch alone can take most of a short budget.
    plan_budget = TimeBudget.measure_and_plan

    def plan_budget_now(self, *args, **kwargs):
        self.started = time.perf_counter()
        return plan_budget(self, *args, **kwargs)

    TimeBudget.measure_and_plan = plan_budget_now
    code = 1
    try:
        code = main(["train", *argv])
    finally:
        (out_dir / f"rank{rank}.json").write_text(json.dumps(record))
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


class Ranks:
    """What each rank of a two-process run left: exit code, output, record."""

    def __init__(self, codes, folder: Path, world: int) -> None:
        self.codes = codes
        self.logs = [(folder / f"rank{r}.log").read_text() for r in range(world)]
        self.records = []
        for r in range(world):
            path = folder / f"rank{r}.json"
            self.records.append(json.loads(path.read_text()) if path.exists() else None)


def run_ranks(argv, tmp_path, *, world=2, cwd=None, signal_at=None, name="ranks") -> Ranks:
    """Run `convzoo train ARGV` on ``world`` processes; fail the test rather than hang."""
    folder = tmp_path / name
    folder.mkdir()
    recipes = tmp_path / "no-recipes"
    recipes.mkdir(exist_ok=True)
    cwds = [str(c) for c in cwd] if cwd else [str(tmp_path)] * world
    opts = {"record": str(folder), "cwd": cwds, "recipes": str(recipes), "signal_at": signal_at}
    port = _free_port()
    procs = [
        CTX.Process(target=_worker, args=(r, world, port, list(argv), opts)) for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + HARD_TIMEOUT
    try:
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.exitcode is None]
    finally:
        for p in procs:
            if p.exitcode is None:
                p.kill()
                p.join()
    ranks = Ranks([p.exitcode for p in procs], folder, world)
    assert not hung, f"ranks {hung} still running after {HARD_TIMEOUT}s: {ranks.logs}"
    return ranks


def weights(run_dir: Path) -> tuple[dict, dict]:
    ck = load_checkpoint(Path(run_dir) / "checkpoints" / "last.pt")
    return ck["model"], ck["ema"]


def assert_close_weights(a: Path, b: Path, tol: float = 1e-5) -> None:
    (ma, ea), (mb, eb) = weights(a), weights(b)
    assert ma.keys() == mb.keys() and ea.keys() == eb.keys()
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], rtol=0, atol=tol, msg=k)
        torch.testing.assert_close(ea[k], eb[k], rtol=0, atol=tol, msg=k)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-data")
    write_idx_dataset(root / "fashion-mnist", n_train=400, n_test=41)  # 41: uneven shards
    return root


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The one-process run every two-process run is compared with."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = train(TrainConfig(data_dir=str(data_dir), quiet=True, out=str(out), **COMMON)).result
    return out, result


@pytest.fixture(autouse=True)
def no_recipes(tmp_path, monkeypatch):
    folder = tmp_path / "no-recipes"
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("CONVZOO_RECIPES", str(folder))


# ---------------------------------------------------------------------------------------
# Tests


@pytest.mark.slow
def test_two_processes_train_like_one(data_dir, reference, tmp_path):
    """Identical weights on both ranks after every step, equal (to 1e-5) to a one-process
    run with the same global batch; each image once per epoch; one run directory, written
    by rank 0; evaluations cover the validation and test sets once."""
    ref_dir, ref_result = reference
    work = tmp_path / "work"
    work.mkdir()
    ranks = run_ranks(cli_args(data_dir), tmp_path, cwd=[work, work])
    assert ranks.codes == [0, 0], ranks.logs

    # Only rank 0 made a run directory (named by rank 0, under the shared working folder).
    assert [p.name for p in work.iterdir()] == ["runs"]
    (run_dir,) = list((work / "runs").iterdir())
    assert {"config.json", "metrics.jsonl", "result.json", "model.safetensors", "checkpoints",
            "curves.png", "confusion.png"} <= {p.name for p in run_dir.iterdir()}  # fmt: skip

    # Only rank 0 prints; it states the global batch.
    assert "global batch 32 = 2 ranks x 16" in ranks.logs[0]
    assert "epoch 2/2" in ranks.logs[0]
    assert "epoch" not in ranks.logs[1] and "test accuracy" not in ranks.logs[1]

    # The same weights on both ranks after every step.
    d0, d1 = ranks.records[0]["digests"], ranks.records[1]["digests"]
    assert len(d0) == STEPS and d0 == d1

    # Each training image exactly once per epoch, across the ranks.
    for epoch in range(2):
        shares = [
            [i for e, _, idx in rec["indices"] if e == epoch for i in idx] for rec in ranks.records
        ]
        assert len(shares[0]) == len(shares[1]) == 96
        assert sorted(shares[0] + shares[1]) == list(range(192))

    # The weights (and their EMA) of a one-process run, to 1e-5; no "module." prefix.
    model, _ = weights(run_dir)
    assert not any(k.startswith("module.") for k in model)
    assert_close_weights(run_dir, ref_dir)

    # Metrics are sums over every rank's images, not averages of averages.
    mine, theirs = rows(run_dir), rows(ref_dir)
    assert [r["step"] for r in mine] == [6, 12]
    for a, b in zip(mine, theirs, strict=True):
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-4)
        assert a["train_accuracy"] == b["train_accuracy"]
        assert a["val_accuracy"] == b["val_accuracy"]
        assert math.isclose(a["val_loss"], b["val_loss"], rel_tol=1e-4)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == STEPS
    assert result["test_images"] == ref_result["test_images"] == 41
    assert result["val_images"] == 81 and result["train_images"] == 192
    assert result["test_accuracy"] == ref_result["test_accuracy"]
    assert result["test_per_class_accuracy"] == ref_result["test_per_class_accuracy"]
    assert math.isclose(result["test_loss"], ref_result["test_loss"], rel_tol=1e-4)
    ck = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ck["world_size"] == 2 and len(ck["rng_ranks"]) == 2
    assert ck["config"]["batch_size"] == 32  # the global batch


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_both_then_resume_on_two_then_one(data_dir, reference, tmp_path):
    """SIGTERM to rank 1 alone: both ranks stop after the same step and rank 0 saves; the
    run continues on two processes (each rank with its own saved RNG state), is stopped
    again, and ends in one process with the reference weights."""
    ref_dir, _ = reference
    out = tmp_path / "stopped"
    ranks = run_ranks(cli_args(data_dir, out=out), tmp_path, signal_at=[1, 5], name="first")
    assert ranks.codes == [128 + signal.SIGTERM] * 2, ranks.logs
    assert "SIGTERM received: stopped at epoch 1, step 5" in ranks.logs[0]
    assert f"--resume {out}" in ranks.logs[0] and "Traceback" not in ranks.logs[0]
    assert "SIGTERM" not in ranks.logs[1]  # rank 0 reports
    assert len(ranks.records[0]["digests"]) == len(ranks.records[1]["digests"]) == 5
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ck["step"] == 5 and ck["world_size"] == 2
    saved_rng = [_rng_digest(state["torch"]) for state in ck["rng_ranks"]]
    assert saved_rng[0] != saved_rng[1]  # each rank has its own dropout RNG

    # Two processes again: each rank takes up its own RNG state; SIGTERM to rank 0 now.
    again = run_ranks(["nin", "--resume", str(out)], tmp_path, signal_at=[0, 3], name="second")
    assert again.codes == [128 + signal.SIGTERM] * 2, again.logs
    assert [rec["rng"][0] for rec in again.records] == saved_rng
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 8

    assert main(["train", "nin", "--resume", str(out), "--quiet"]) == 0  # one process
    assert_close_weights(out, ref_dir)
    for a, b in zip(rows(out), rows(ref_dir), strict=True):
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-4)
        assert a["train_accuracy"] == b["train_accuracy"]


@pytest.mark.slow
def test_one_process_checkpoint_resumes_on_two(data_dir, reference, tmp_path):
    """A run stopped in one process continues on two processes to the same weights."""
    ref_dir, _ = reference
    out = tmp_path / "crashed"

    def crash(step: int) -> None:
        if step == 9:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(
            TrainConfig(data_dir=str(data_dir), quiet=True, out=str(out), **COMMON), on_step=crash
        )
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 8  # mid epoch 2

    ranks = run_ranks(["nin", "--resume", str(out)], tmp_path)
    assert ranks.codes == [0, 0], ranks.logs
    assert "a run of 1 process, now 2" in ranks.logs[0]
    d0, d1 = ranks.records[0]["digests"], ranks.records[1]["digests"]
    assert len(d0) == STEPS - 8 and d0 == d1
    assert_close_weights(out, ref_dir)
    assert json.loads((out / "result.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_error_on_one_rank_stops_every_rank(data_dir, tmp_path):
    """A data folder missing on one machine only: both ranks exit with the message at
    once (exit 2, no traceback) instead of one waiting for the other, and no run
    directory is left behind."""
    here, there = tmp_path / "machine0", tmp_path / "machine1"
    here.mkdir()
    there.mkdir()
    (here / "data").symlink_to(data_dir)  # `--data-dir data` exists for rank 0 only
    out = tmp_path / "never"
    argv = ["nin", "--width", "0.125", "--data-dir", "data", "--val-size", "40", "--out", str(out),
            "--epochs", "1"]  # fmt: skip
    ranks = run_ranks(argv, tmp_path, cwd=[here, there])
    assert ranks.codes == [2, 2], ranks.logs
    lines = [ln for ln in ranks.logs[0].splitlines() if ln.strip()]
    assert lines == ["convzoo train: error: rank 1: data directory data does not exist"]
    assert ranks.logs[1].strip() == ""  # rank 0 reports for every rank
    assert not out.exists()


@pytest.mark.slow
def test_torchrun_launch(data_dir, tmp_path):
    """`python -m torch.distributed.run --standalone --nproc-per-node 2 -m convzoo train`."""
    out = tmp_path / "run"
    env = {
        **os.environ,
        "CONVZOO_RECIPES": str(tmp_path / "no-recipes"),
        "CONVZOO_DIST_TIMEOUT": "60",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "convzoo", "train", "nin", "--width", "0.125", "--data-dir",
           str(data_dir), "--limit-train", "64", "--val-size", "20", "--batch-size", "32",
           "--epochs", "1", "--out", str(out)]  # fmt: skip
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=HARD_TIMEOUT, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "global batch 32 = 2 ranks x 16" in done.stderr
    assert done.stderr.count("test accuracy") == 1  # printed by rank 0 only
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 2 and result["test_images"] == 41
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    assert [p.name for p in tmp_path.iterdir() if p.name != "no-recipes"] == ["run"]


@pytest.mark.slow
def test_time_budget_and_sync_bn(data_dir, tmp_path):
    """Under a time budget every rank follows rank 0's plan (the same steps, no hang);
    --sync-bn converts the batch norm layers, and the checkpoint loads into the plain
    model."""
    out = tmp_path / "budget"
    argv = ["resnet18", "--width", "0.125", "--data-dir", str(data_dir), "--limit-train", "192",
            "--val-size", "40", "--batch-size", "32", "--time-budget", "20s", "--sync-bn",
            "--out", str(out)]  # fmt: skip
    ranks = run_ranks(argv, tmp_path)
    assert ranks.codes == [0, 0], ranks.logs
    assert "SyncBatchNorm in 20 layers" in ranks.logs[0]
    result = json.loads((out / "result.json").read_text())
    d0, d1 = ranks.records[0]["digests"], ranks.records[1]["digests"]
    steps = result["steps"]
    assert steps == result["final_planned_steps"] >= 1
    # the probe's steps (rolled back) come first, then the run's: the same on both ranks
    assert len(d0) > steps and d0 == d1
    model = model_from_checkpoint(load_checkpoint(out / "checkpoints" / "last.pt"))
    assert not any("Sync" in type(m).__name__ for m in model.modules())


def _eval_worker(rank: int, world: int, port: int, folder: str) -> None:
    """Sharded evaluation and SyncBatchNorm gradients, compared with one process."""
    import copy

    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    import convzoo
    from convzoo.data.loader import Loader
    from convzoo.evaluate import evaluate
    from convzoo.train.distributed import convert_sync_batchnorm, session

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port), LOCAL_WORLD_SIZE=str(world), CONVZOO_DIST_TIMEOUT="60",
    )  # fmt: skip
    torch.set_num_threads(1)
    report: dict = {}
    with session() as procs:
        torch.manual_seed(0)
        model = convzoo.get_model("nin", num_classes=4, in_channels=1, small_input=True, width=0.1)
        for n in (5, 1):  # shards of 3 and 2 images; of 1 and none
            images = torch.randint(0, 255, (n, 1, 28, 28), dtype=torch.uint8)
            labels = torch.arange(n) % 4
            whole = evaluate(
                model, Loader(images, labels, batch_size=2, mean=(0.5,), std=(0.2,)), 4
            )
            lo, hi = shard_bounds(n, procs.rank, procs.world_size)
            shard = Loader(images[lo:hi], labels[lo:hi], batch_size=2, mean=(0.5,), std=(0.2,))
            mine = evaluate(model, shard, 4, distributed=True)
            report[f"eval{n}"] = [
                mine.num_samples == whole.num_samples == n,
                mine.confusion == whole.confusion,
                mine.accuracy == whole.accuracy,
                abs(mine.loss - whole.loss) < 1e-5,
            ]
        # SyncBatchNorm + DDP on shards of the batch = batch norm on the whole batch (float64).
        torch.manual_seed(0)
        net = convzoo.get_model(
            "resnet18", num_classes=10, in_channels=1, small_input=True, width=0.125
        ).double()
        x, y = torch.randn(8, 1, 28, 28, dtype=torch.float64), torch.arange(8) % 10
        single = copy.deepcopy(net)
        F.cross_entropy(single(x), y).backward()
        synced, layers = convert_sync_batchnorm(net, torch.device("cpu"))
        ddp = DistributedDataParallel(synced)
        lo, hi = shard_bounds(8, procs.rank, procs.world_size)
        F.cross_entropy(ddp(x[lo:hi]), y[lo:hi]).backward()
        worst = max(
            (p.grad - q.grad).abs().max().item()
            for p, q in zip(synced.parameters(), single.parameters(), strict=True)
        )
        stats = max(
            (a - b).abs().max().item()
            for a, b in zip(synced.buffers(), single.buffers(), strict=True)
            if a.is_floating_point()
        )
        report["sync_bn"] = [layers, worst, stats]
    Path(folder, f"eval{rank}.json").write_text(json.dumps(report))


def test_sharded_evaluation_and_sync_batchnorm(tmp_path):
    port = _free_port()
    procs = [CTX.Process(target=_eval_worker, args=(r, 2, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(HARD_TIMEOUT)
    for p in procs:
        if p.exitcode is None:
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    for r in range(2):
        report = json.loads((tmp_path / f"eval{r}.json").read_text())
        assert report["eval5"] == [True] * 4 and report["eval1"] == [True] * 4
        layers, grad_diff, stats_diff = report["sync_bn"]
        assert layers == 20 and grad_diff < 1e-10 and stats_diff < 1e-12


# ---------------------------------------------------------------------------------------
# The launch environment


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"RANK": "3", "WORLD_SIZE": "2"}, "RANK 3 is not in 0..1"),
        ({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE must be a whole number"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": ""}, "MASTER_ADDR is not set"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2"}, "LOCAL_RANK 2 is not in 0..1"),
        ({"RANK": "0", "WORLD_SIZE": "2", "CONVZOO_DIST_TIMEOUT": "soon"}, "CONVZOO_DIST_TIMEOUT"),
    ],
)
def test_bad_launch_environment(env, needle, data_dir, monkeypatch, capsys):
    base = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999", "LOCAL_WORLD_SIZE": "2"}
    for key, value in {**base, **env}.items():
        monkeypatch.setenv(key, value)
    code = main(["train", "nin", "--data-dir", str(data_dir), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_nobody_else_joins(data_dir, monkeypatch, capsys, tmp_path):
    """Rank 0 of 2 alone: a clear error once the timeout passes, not a hang."""
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "CONVZOO_DIST_TIMEOUT": "2"}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "alone"
    code = main(["train", "nin", "--data-dir", str(data_dir), "--epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "rank 0 could not join the 2 processes" in err and "Traceback" not in err
    assert not out.exists()


def test_launch_env_and_batch_line():
    assert launch_env({}) is None
    env = launch_env(
        {
            "RANK": "3",
            "WORLD_SIZE": "4",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "node0",
            "MASTER_PORT": "29500",
        }  # fmt: skip
    )
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 4, 1, 2)
    assert global_batch_line(256, 2) == "global batch 256 = 2 ranks x 128"
    assert global_batch_line(100, 3) == "global batch 100 = 3 ranks x 33-34"
    pieces = [shard_bounds(10, r, 4) for r in range(4)]
    assert pieces == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert [shard_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]
