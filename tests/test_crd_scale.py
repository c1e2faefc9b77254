"""CRD at ImageNet scale: the drawn rows scored alone (gathered chunk by chunk) give the loss, the gradients and the bank
updates of the whole-bank matmul, and no buffer of a step grows with batch x bank size (the scores, their gradient,
the device draw). The memory at 1.28M rows is measured by benchmarks/bench_crd.py."""
import copy

import pytest
import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import timm_kd  # noqa: F401  (registers the CIFAR models)
from timm_kd.distill.methods import ModelOutputs, create_method
from timm_kd.distill.methods.crd import draw_on_device

NUM_CLASSES, WIDTH = 5, 64  # WIDTH: resnet8's pre-logits


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any op allocates (an output that is not a view of, or written into, an input)."""

    def __init__(self):
        super().__init__()
        self.numel, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs and t.numel() > self.numel:
                self.numel, self.op = t.numel(), str(func)
        return out


def _crd(num_samples, nce_k, feat_dim=8):
    """A CRD module of two resnet8 (64 pre-logit features; only the embedding heads are used) whose bank rows all
    carry a label."""
    torch.manual_seed(0)
    student = timm.create_model('resnet8', num_classes=NUM_CLASSES)
    teacher = timm.create_model('resnet8', num_classes=NUM_CLASSES)
    method = create_method('crd', student, teacher, num_classes=NUM_CLASSES, temperature=4.0,
                           num_samples=num_samples, nce_k=nce_k, feat_dim=feat_dim)
    method.labels.copy_(torch.arange(num_samples) % NUM_CLASSES)  # every sample seen: negatives of other classes
    return method


def _step(method, p_s, p_t, target, index):
    """One CRD step; (loss, gradient in the student's pre-logits, gradients of the embedding heads)."""
    p_s = p_s.clone().requires_grad_()
    method.zero_grad()
    loss = method(ModelOutputs(None, pre_logits=p_s), ModelOutputs(None, pre_logits=p_t), target, index=index)
    loss['crd_loss'].backward()
    return loss['crd_loss'].detach(), p_s.grad, [p.grad.clone() for p in method.parameters()]


@pytest.mark.parametrize('batch', [7, 16])
def test_drawn_rows_give_the_values_of_the_whole_bank_matmul(batch):
    """Today's exact path (one matmul with the whole bank, unchunked) against the drawn rows gathered 2 anchors at a
    time and against the whole-bank matmul in chunks of 3 anchors: loss, gradients, banks and Z over two steps (the
    first fixes Z, the second reads banks the first updated)."""
    whole = _crd(num_samples=60, nce_k=9)
    whole.chunk_elements = 10 ** 9
    whole.dense_max_rows_per_draw = 10 ** 9
    drawn, chunked = copy.deepcopy(whole), copy.deepcopy(whole)
    drawn.dense_max_rows_per_draw = 0
    drawn.chunk_elements = 2 * (1 + drawn.nce_k) * 8  # two anchors' rows of 8 floats
    chunked.chunk_elements = 3 * chunked.num_samples
    assert whole._scores_whole_bank() and chunked._scores_whole_bank() and not drawn._scores_whole_bank()
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        p_s, p_t = torch.randn(batch, WIDTH, generator=g), torch.randn(batch, WIDTH, generator=g)
        index = torch.randperm(60, generator=g)[:batch]
        target = index % NUM_CLASSES
        ref = _step(whole, p_s, p_t, target, index)
        for other in (drawn, chunked):
            loss, grad, head_grads = _step(other, p_s, p_t, target, index)
            torch.testing.assert_close(loss, ref[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(grad, ref[1], rtol=1e-4, atol=1e-6)
            for a, b in zip(head_grads, ref[2]):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
            for key, value in whole.state_dict().items():
                torch.testing.assert_close(other.state_dict()[key], value, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('whole_bank', [True, False])
def test_no_buffer_of_a_step_grows_with_batch_times_bank(whole_bank):
    """A step on a bank of 20000 rows with 32 anchors: a (batch, n_data) buffer would hold 640000 floats; the largest
    tensor any op writes stays within the chunk budget (here 4 rows of the bank)."""
    method = _crd(num_samples=20000, nce_k=63)
    method.chunk_elements = 4 * method.num_samples
    method.dense_max_rows_per_draw = 10 ** 9 if whole_bank else 0
    assert method._scores_whole_bank() == whole_bank
    batch = 32
    index = torch.randperm(method.num_samples)[:batch]
    p_s, p_t = torch.randn(batch, WIDTH), torch.randn(batch, WIDTH)
    for _ in range(2):  # the second step reuses the kept scratch buffer
        with LargestOutput() as largest:
            _step(method, p_s, p_t, index % NUM_CLASSES, index)
        assert largest.numel <= method.chunk_elements < batch * method.num_samples // 4, (largest.numel, largest.op)


def test_device_draw_takes_its_random_keys_a_few_anchors_at_a_time():
    labels = torch.arange(5000) % NUM_CLASSES
    target, index = torch.arange(24) % NUM_CLASSES, torch.arange(24)
    with LargestOutput() as largest:
        rows = draw_on_device(labels, index, target, 40, torch.Generator().manual_seed(0), budget=3 * 5000)
    assert largest.numel <= 3 * 5000 < 24 * 5000, largest.op
    assert torch.equal(rows[:, 0], index) and (labels[rows[:, 1:]] != target[:, None]).all()
    assert all(len(set(r)) == 41 for r in rows.tolist())  # no repeats
