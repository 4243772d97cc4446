"""convzoo tune end to end, with tiny trials (width 0.125, a slice of synthetic data,
one thread, seconds each): the SQLite default, pruning, best.toml, stopping and
resuming, and a throwaway PostgreSQL cluster shared by two workers, one of them killed.

PostgreSQL: the fixture runs ``initdb`` and ``pg_ctl`` (from PATH or Debian's
/usr/lib/postgresql/*/bin) into a temporary folder on a free localhost port, as the
unprivileged user ``nobody`` when the tests run as root, and stops the cluster at the
end. Without PostgreSQL binaries the tests fail under CI (``$CI`` set, as .ci/run
does) and are skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna  # a dev dependency: a missing one fails, never skips
import pytest

pytestmark = pytest.mark.slow

SPACE = """
lr = { low = 1e-6, high = 0.4, log = true }
label_smoothing = { low = 0.0, high = 0.1 }
width = { choices = [0.125] }
batch_size = { choices = [32] }
ema = { choices = [0.0] }
"""
TRIAL = ["--trial-budget", "8s", "--limit-train", "400", "--val-size", "150", "--threads", "1",
         "--no-amp", "--no-channels-last"]  # fmt: skip


@pytest.fixture
def tune_env(tmp_path, make_idx_dataset, data_env, monkeypatch):
    """A learnable synthetic Fashion-MNIST, the tiny space, and the environment a
    ``convzoo tune`` subprocess needs to find both and this checkout."""
    data = make_idx_dataset(tmp_path / "fmnist", n_train=600, n_test=60)
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    env = dict(
        os.environ, CONVZOO_DATA=str(data), PYTHONPATH=str(Path(__file__).parents[1] / "src")
    )
    env.pop("CONVZOO_MIRROR", None)
    monkeypatch.setenv("CONVZOO_DATA", str(data))
    return env, space


def tune_argv(space: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "convzoo", "tune", "resnet18", *TRIAL,
            "--space", str(space), "--out", str(out), *extra]  # fmt: skip


def run_tune(env, space, out, *extra, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(tune_argv(space, out, *extra), env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def load(storage: str, name: str = "resnet18-fashion-mnist"):
    return optuna.load_study(study_name=name, storage=storage)


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


def wait_for_running(storage: str, name: str, proc, timeout: float = 60):
    """The first RUNNING trial of the study (polled while ``proc`` lives)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        with contextlib.suppress(Exception):
            running = load(storage, name).get_trials(states=(optuna.trial.TrialState.RUNNING,))
            if running:
                return running[0]
        time.sleep(0.3)
    raise AssertionError(f"no trial started; tune exited {proc.poll()}")


# ---------------------------------------------------------------------------- SQLite


def test_sqlite_default_pruning_best_toml_and_the_test_split_unread(tune_env, tmp_path):
    env, space = tune_env
    out = tmp_path / "study"
    first = run_tune(env, space, out, "--trials", "1", "--pruner", "median")
    assert first.returncode == 0, first.stderr
    assert "trial 0 complete" in first.stdout and "best" in first.stdout
    storage = f"sqlite:///{out / 'study.db'}"
    study = load(storage)
    (recipe_trial,) = study.get_trials()
    assert recipe_trial.user_attrs["queued"] == "recipe"
    assert recipe_trial.params["lr"] == 0.2  # the shipped recipe's
    # A hopeless trial (a learning rate too small to learn anything) is queued next;
    # running the same command with more trials continues the study.
    study.enqueue_trial(dict(recipe_trial.params, lr=1e-6))
    run = run_tune(env, space, out, "--trials", "2", "--pruner", "median")
    assert run.returncode == 0, run.stderr
    trials = load(storage).get_trials()
    assert [t.number for t in trials] == [0, 1]
    good, bad = trials
    assert good.state.name == "COMPLETE" and bad.state.name == "PRUNED"
    # It stopped early: no value at the end of its schedule, and fewer steps.
    assert max(bad.intermediate_values) < 100 <= max(good.intermediate_values)
    assert bad.user_attrs["stopped_at_percent"] < 100
    assert "trial 1 pruned" in run.stdout
    # Every trial's result.json says the test split was not evaluated.
    for t in trials:
        result = Path(t.user_attrs["run_dir"]) / "result.json"
        if result.exists():
            assert json.loads(result.read_text())["test_accuracy"] is None
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [(r["number"], r["state"]) for r in rows] == [(0, "COMPLETE"), (1, "PRUNED")]
    assert "optimization history" in (out / "report.html").read_text().lower()
    # best.toml trains as it is.
    best = out / "best.toml"
    assert "lr = " in best.read_text()
    from convzoo.cli import main

    # (one epoch instead of the recipe's time budget, which counts from the start of
    # this process)
    code = main(["train", "resnet18", "--recipe", str(best), "--out", str(tmp_path / "again"),
                 "--quiet", "--epochs", "1"])  # fmt: skip
    assert code == 0
    again = json.loads((tmp_path / "again" / "result.json").read_text())
    assert again["width"] == 0.125 and again["test_accuracy"] is not None


def test_sigterm_fails_and_requeues_the_running_trial_and_the_command_continues(tune_env, tmp_path):
    env, space = tune_env
    out = tmp_path / "study"
    storage = f"sqlite:///{out / 'study.db'}"
    argv = tune_argv(space, out, "--trials", "1")
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        running = wait_for_running(storage, "resnet18-fashion-mnist", proc)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "run the same command to continue" in err and "Traceback" not in err
    study = load(storage)
    assert states(study) == ["FAIL", "WAITING"]  # recorded, and queued again
    assert study.get_trials()[1].user_attrs["retry_of"] == running.number
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    trials = load(storage).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == trials[0].params


# ------------------------------------------------------------------------ PostgreSQL


def postgres_bin() -> Path | None:
    """The folder of initdb and pg_ctl: PATH, else Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster on a free localhost port; its URL."""
    import psycopg  # noqa: F401  (the tune extra's PostgreSQL driver)

    bindir = postgres_bin()
    if bindir is None:
        reason = "PostgreSQL binaries (initdb, pg_ctl) not found; apt-get install postgresql"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="convzoo-pg-"))
    as_user = {}
    if os.geteuid() == 0:  # initdb refuses to run as root
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)

        def demote() -> None:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)

        as_user = {"preexec_fn": demote}
    root.chmod(0o755)
    data, port = root / "data", free_port()
    pg_env = dict(os.environ, LC_ALL="C", HOME=str(root))

    def pg(*args: str, check: bool = True) -> None:
        subprocess.run([str(bindir / args[0]), *args[1:]], cwd=root, env=pg_env, check=check,
                       capture_output=True, timeout=120, **as_user)  # fmt: skip

    pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -h 127.0.0.1 -k {root}"
    pg("pg_ctl", "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_workers_share_a_postgresql_study_and_a_killed_workers_trial_is_retried(
    tune_env, tmp_path, postgres_url
):
    """Workers A and B start on one study; A is SIGKILLed mid-trial; C joins. The
    heartbeat fails A's trial, a worker retries it, and B and C report the same best."""
    env, space = tune_env
    shared = ["--storage", postgres_url, "--study", "shared", "--trials", "3",
              "--pruner", "none", "--heartbeat", "1", "--grace", "3"]  # fmt: skip

    def start(name: str, seed: int, out=subprocess.PIPE):
        argv = tune_argv(space, tmp_path / name, *shared, "--seed", str(seed))
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.PIPE, text=True)

    a = start("a", 0, out=subprocess.DEVNULL)
    b = start("b", 1)
    try:
        wait_for_running(postgres_url, "shared", a)
        mine = None
        while mine is None and a.poll() is None:  # a trial of A's own
            running = load(postgres_url, "shared").get_trials(
                states=(optuna.trial.TrialState.RUNNING,)
            )
            mine = next(
                (t for t in running if t.user_attrs.get("worker", "").endswith(f":{a.pid}")), None
            )
            time.sleep(0.2)
    finally:
        a.kill()  # SIGKILL: no handler runs
        a.wait()
    assert mine is not None
    c = start("c", 2)
    outs = [p.communicate(timeout=180) for p in (b, c)]
    for p, (_, err) in zip((b, c), outs, strict=True):
        assert p.returncode == 0, err
    trials = load(postgres_url, "shared").get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    failed = trials[mine.number]
    assert failed.state.name == "FAIL"
    (retried,) = [t for t in trials if t.system_attrs.get("failed_trial") == mine.number]
    assert retried.params == failed.params and retried.state.name == "COMPLETE"
    assert all(t.state.name == "COMPLETE" for t in trials if t.number != mine.number)
    # Every trial but the killed one was run, and printed, by B or C.
    ran = [{int(line.split()[1]) for line in stdout.splitlines() if line.startswith("trial ")}
           for stdout, _ in outs]  # fmt: skip
    assert not ran[0] & ran[1]
    assert ran[0] | ran[1] == set(numbers) - {mine.number}
    bests = [next(x for x in stdout.splitlines() if x.startswith("best: ")) for stdout, _ in outs]
    assert bests[0] == bests[1]
    assert (tmp_path / "b" / "best.toml").read_text() == (tmp_path / "c" / "best.toml").read_text()


def test_sqlite_serves_several_workers_without_database_is_locked(tmp_path):
    """Storage only (no training): WORKERS processes each run TRIALS quick trials with
    reports on one SQLite study, as tune's workers do; none may fail."""
    workers, trials = 4, 10
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    script = (
        "import sys\n"
        "from convzoo.tune.study import StudyOptions, open_study\n"
        f"study = open_study(StudyOptions({storage!r}, 'load', pruner='median'), worker=int(sys.argv[1]))\n"
        "def objective(trial):\n"
        "    x = trial.suggest_float('x', 0, 1)\n"
        "    for step in (20, 40, 60, 80):\n"
        "        trial.report(x * step, step)\n"
        "    return x\n"
        f"study.optimize(objective, n_trials={trials})\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    from convzoo.tune.study import StudyOptions, open_study

    open_study(StudyOptions(storage, "load"))  # made once, before the workers race
    procs = [subprocess.Popen([sys.executable, "-c", script, str(k)], env=env,
                              stderr=subprocess.PIPE, text=True) for k in range(workers)]  # fmt: skip
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert not any("database is locked" in e for e in errors)
    done = load(storage, "load").get_trials()
    assert len(done) == workers * trials
    assert all(t.state.name == "COMPLETE" for t in done)


def test_a_run_that_skips_the_test_never_evaluates_the_test_split(
    tiny_fashion_mnist, tmp_path, monkeypatch, one_thread
):
    from convzoo.train import TrainConfig, train
    from convzoo.train.setup import Loaders

    seen = []
    real = Loaders.eval_loader

    def spy(self, images, labels, procs):
        seen.append(len(labels))
        return real(self, images, labels, procs)

    monkeypatch.setattr(Loaders, "eval_loader", spy)
    cfg = TrainConfig(model="resnet18", width=0.125, epochs=1, batch_size=32, val_size=0.25,
                      tta=True, out=str(tmp_path / "run"), quiet=True)  # fmt: skip
    result = train(cfg, test=False).result
    assert result["test_accuracy"] is None and result["tested"] is False
    assert 0 <= result["final_val_accuracy_tta"] <= 1
    assert 40 not in seen  # the 40 test images were never made into a loader
    assert "test_accuracy_tta" not in result
