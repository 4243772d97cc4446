"""convzoo.evaluate: accuracy, loss, per-class accuracy, confusion matrix and TTA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convzoo.errors import DataError
from convzoo.evaluate import EvalResult, evaluate, metrics_from_logits, predict_logits

K = 4


class ChannelMean(nn.Module):
    """Logit k = mean of channel k: a fixed function of the input, invariant to flips."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(K)  # present only to check that modes are restored
        self.seen_training: list[bool] = []
        self.seen_inference: list[bool] = []

    def forward(self, x):
        self.seen_training.append(self.training)
        self.seen_inference.append(torch.is_inference_mode_enabled())
        return x.mean(dim=(2, 3))  # (N, K)


class LeftHalf(nn.Module):
    """Logit k = mean of the left half of channel k: changes under a horizontal flip."""

    def forward(self, x):
        return x[..., : x.shape[-1] // 2].mean(dim=(2, 3)) * 3  # (N, K)


class WithAux(nn.Module):
    """Returns (logits, aux1, aux2) in training mode, like GoogLeNet with aux_logits."""

    def __init__(self):
        super().__init__()
        self.core = ChannelMean()

    def forward(self, x):
        logits = self.core(x)
        return (logits, -logits, -logits) if self.training else logits


def make_data(
    labels: list[int], preds: list[int], size: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose channel ``pred`` is bright: ChannelMean predicts ``pred``."""
    x = torch.zeros(len(labels), K, size, size)
    gen = torch.Generator().manual_seed(1)
    x += 0.1 * torch.rand(x.shape, generator=gen)
    for i, p in enumerate(preds):
        x[i, p] += 1.0 + 0.5 * (i % 3)
    return x, torch.tensor(labels)


def batches(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 0, 1, 2, 3, 3, 1]
PREDS = [0, 1, 0, 1, 1, 2, 3, 2, 0, 3, 3, 0, 2, 2, 1, 3, 1]


def expected_confusion(labels, preds):
    c = [[0] * K for _ in range(K)]
    for t, p in zip(labels, preds, strict=True):
        c[t][p] += 1
    return c


def test_accuracy_and_confusion_of_a_fixed_function():
    x, y = make_data(LABELS, PREDS)
    result = evaluate(ChannelMean(), batches(x, y, 5), K)
    assert isinstance(result, EvalResult)
    assert result.num_samples == len(LABELS)
    correct = sum(t == p for t, p in zip(LABELS, PREDS, strict=True))
    assert result.accuracy == pytest.approx(correct / len(LABELS))
    assert result.confusion == expected_confusion(LABELS, PREDS)
    for k in range(K):
        idx = [i for i, t in enumerate(LABELS) if t == k]
        want = sum(PREDS[i] == k for i in idx) / len(idx)
        assert result.per_class_accuracy[k] == pytest.approx(want)
    logits = x.mean(dim=(2, 3))
    assert result.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)


def test_result_does_not_depend_on_batching():
    x, y = make_data(LABELS, PREDS)
    a = evaluate(ChannelMean(), batches(x, y, 1), K)
    b = evaluate(ChannelMean(), batches(x, y, 64), K)
    assert a.confusion == b.confusion
    assert a.accuracy == b.accuracy
    assert a.loss == pytest.approx(b.loss, rel=1e-6)


def test_perfect_and_wrong_models():
    x, y = make_data([0, 1, 2, 3], [0, 1, 2, 3])
    assert evaluate(ChannelMean(), [(x, y)], K).accuracy == 1.0
    x, y = make_data([0, 1, 2, 3], [1, 2, 3, 0])
    result = evaluate(ChannelMean(), [(x, y)], K)
    assert result.accuracy == 0.0
    assert result.per_class_accuracy == [0.0] * K


def test_eval_mode_inference_mode_and_modes_restored():
    model = ChannelMean()
    model.train()
    model.bn.eval()  # a submodule deliberately in another mode (e.g. frozen batch norm)
    x, y = make_data(LABELS, PREDS)
    evaluate(model, batches(x, y, 8), K)
    assert model.seen_training and not any(model.seen_training)
    assert all(model.seen_inference)
    assert model.training is True and model.bn.training is False


def test_modes_restored_after_an_error():
    class Boom(ChannelMean):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Boom().train()
    x, y = make_data([0], [0])
    with pytest.raises(RuntimeError):
        evaluate(model, [(x, y)], K)
    assert model.training and model.bn.training


def test_model_returning_a_tuple_in_training_mode():
    model = WithAux().train()
    x, y = make_data(LABELS, PREDS)
    result = evaluate(model, batches(x, y, 6), K)
    assert result.confusion == expected_confusion(LABELS, PREDS)
    assert model.training


def test_tta_on_a_flip_invariant_model_equals_no_tta():
    x, y = make_data(LABELS, PREDS)
    plain = evaluate(ChannelMean(), batches(x, y, 5), K)
    tta = evaluate(ChannelMean(), batches(x, y, 5), K, tta=True)
    assert tta.confusion == plain.confusion
    assert tta.accuracy == plain.accuracy
    assert tta.loss == pytest.approx(plain.loss, rel=1e-5)


def test_tta_averages_the_softmax_of_image_and_flip():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, K, 4, 6, generator=gen)
    y = torch.randint(0, K, (9,), generator=gen)
    model = LeftHalf()
    logits, labels = predict_logits(model, batches(x, y, 4), tta=True)
    want = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    torch.testing.assert_close(logits.softmax(1), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(labels, y)
    plain, _ = predict_logits(model, batches(x, y, 4))
    assert not torch.allclose(plain.softmax(1), want, atol=1e-3)  # the flip matters here
    result = evaluate(model, batches(x, y, 4), K, tta=True)
    assert result.loss == pytest.approx(float(-want[torch.arange(9), y].log().mean()), rel=1e-5)


def test_soft_labels_count_as_their_largest_class():
    x, y = make_data(LABELS, PREDS)
    soft = F.one_hot(y, K).float() * 0.8 + 0.05
    result = evaluate(ChannelMean(), batches(x, soft, 7), K)
    assert result.confusion == expected_confusion(LABELS, PREDS)


def test_a_class_without_images_has_nan_accuracy_and_null_in_json():
    x, y = make_data([0, 1, 1], [0, 1, 0])
    result = evaluate(ChannelMean(), [(x, y)], K)
    assert math.isnan(result.per_class_accuracy[2])
    d = result.to_dict()
    assert d["per_class_accuracy"][2] is None
    assert d["per_class_accuracy"][1] == 0.5
    assert d["confusion"] == result.confusion


def test_empty_loader_is_a_data_error():
    with pytest.raises(DataError, match="no batches"):
        evaluate(ChannelMean(), [], K)


def test_labels_out_of_range_are_a_data_error():
    x, _ = make_data([0, 1], [0, 1])
    with pytest.raises(DataError, match="labels"):
        evaluate(ChannelMean(), [(x, torch.tensor([0, K]))], K)


def test_metrics_from_logits_checks_shapes():
    with pytest.raises(ValueError):
        metrics_from_logits(torch.zeros(3, K + 1), torch.zeros(3, dtype=torch.long), K)
    with pytest.raises(ValueError):
        metrics_from_logits(torch.zeros(3, K), torch.zeros(2, dtype=torch.long), K)
