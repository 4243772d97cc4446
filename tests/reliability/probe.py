"""`python -m convzoo` with probes: markers on stderr saying where the process is, and
an optional pause at one chosen place, so that a test can SIGKILL it there.

Test instrumentation for test_kill_resume.py (nothing in convzoo knows about it): run
as ``python tests/reliability/probe.py train MODEL ...``, the same as ``python -m
convzoo train MODEL ...`` apart from the probes. On stderr, unbuffered, one line each:

    @@probe step          a training batch is handed to the training step
    @@probe update        the step's gradients are computed, the weights not yet updated
    @@probe eval          an evaluation begins (validation, or the final test)
    @@probe eval-batch    evaluation has computed its first batch
    @@probe eval-done     the evaluation is over
    @@probe write         a checkpoint's bytes start going to its temporary file
    @@probe write-half    half of them are written
    @@probe rename        the temporary file is whole and about to be renamed
    @@probe renamed       the rename is done
    @@probe test          the final test evaluation begins (predict_logits)
    @@probe test-batch    it has computed its first batch
    @@probe write-model   model.safetensors is whole and about to be renamed into place
    @@probe write-result  result.json is whole and about to be renamed into place

``$CONVZOO_PROBE_PAUSE=KIND:N:SECONDS`` (KIND one of update, eval-batch, write-half,
rename, test-batch, write-model, write-result) sleeps SECONDS at the N-th occurrence of that marker, right after writing it: a
kill in the pause lands in the middle of a training step, mid-evaluation, in a
half-written temporary file, or between a whole temporary file and its rename.
"""

from __future__ import annotations

import io
import os
import runpy
import sys
import time
from collections import Counter

MARK = "@@probe"
_counts: Counter = Counter()
_pause = os.environ.get("CONVZOO_PROBE_PAUSE", "")


def mark(kind: str) -> None:
    os.write(2, f"{MARK} {kind}\n".encode())
    _counts[kind] += 1
    if _pause:
        what, n, seconds = _pause.split(":")
        if what == kind and int(n) == _counts[kind]:
            time.sleep(float(seconds))


def install() -> None:
    import torch

    import convzoo.evaluate
    from convzoo.data import loader

    real_save, real_replace, real_epoch = torch.save, os.replace, loader.Loader.epoch
    real_evaluate = convzoo.evaluate.evaluate
    real_predict = convzoo.evaluate.predict_logits
    state = {"eval": False}

    def save(obj, f, *args, **kwargs):
        if not hasattr(f, "write"):
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        mark("write")
        f.write(data[: len(data) // 2])
        f.flush()  # in the kernel's hands: a SIGKILL now leaves a half-written file
        mark("write-half")
        f.write(data[len(data) // 2 :])

    def replace(src, dst, *args, **kwargs):
        probed = str(dst).endswith(".pt")
        if str(dst).endswith("model.safetensors"):
            mark("write-model")
        if str(dst).endswith("result.json"):
            mark("write-result")
        if probed:
            mark("rename")
        real_replace(src, dst, *args, **kwargs)
        if probed:
            mark("renamed")

    def epoch(self, *args, **kwargs):
        first = True
        for batch in real_epoch(self, *args, **kwargs):
            if not state["eval"]:
                mark("step")
            yield batch
            if state["eval"] and first:
                mark("test-batch" if state["eval"] == "test" else "eval-batch")
            first = False

    def evaluate(*args, **kwargs):
        mark("eval")
        state["eval"] = True
        try:
            return real_evaluate(*args, **kwargs)
        finally:
            state["eval"] = False
            mark("eval-done")

    def predict_logits(*args, **kwargs):
        if state["eval"]:  # inside evaluate(): already marked
            return real_predict(*args, **kwargs)
        mark("test")
        state["eval"] = "test"
        try:
            return real_predict(*args, **kwargs)
        finally:
            state["eval"] = False

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    register_optimizer_step_pre_hook(lambda *args: mark("update"))
    torch.save = save
    os.replace = replace
    loader.Loader.epoch = epoch
    convzoo.evaluate.evaluate = evaluate
    convzoo.evaluate.predict_logits = predict_logits


if __name__ == "__main__":
    install()
    sys.argv[0] = "convzoo"
    runpy.run_module("convzoo", run_name="__main__", alter_sys=True)
