"""What the distillation step reports beside its loss: the pick diagnostics and statistics of the teacher.

Per step, on the device (a handful of small kernels, no host sync; ``DistillationTask(diagnostics=False)``
skips them): ``kl_ratio`` (r = mean KL of the picked rows / mean KL of the pool, paper Eq. 4),
``pick_diagnostics`` (the picked share of the pool, the share of the batch's images with a picked view) and
``label_disagreement`` (share of the trained mixed views whose teacher argmax differs from the label of the
larger-area source).

``TeacherProbStats`` is the teacher-only augmentation score of Wang et al. (the standard deviation of the
chunk-mean teacher probability, the mean entropy, the share of originals the teacher gets wrong). The
training loop logs it every epoch (``summary.csv``'s ``train_t_*`` columns) and ``python -m
timm_kd.da_score`` ranks views by it.
"""
import math
from typing import Any, Dict, List, Optional

import torch

from timm_kd.data.pick import per_sample_kl

__all__ = ['kl_ratio', 'pick_diagnostics', 'label_disagreement', 'TeacherProbStats']


def kl_ratio(s_pool: torch.Tensor, t_pool: torch.Tensor, rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean per-sample KL(teacher || student) at T of the picked ``rows`` over its mean on the whole pool."""
    kl_pool = per_sample_kl(s_pool, t_pool, temperature)
    return kl_pool[rows].mean() / kl_pool.mean()


def pick_diagnostics(rows: torch.Tensor, pool_size: int, source: torch.Tensor, batch_size: int,
                     like: torch.Tensor) -> Dict[str, torch.Tensor]:
    """``picked_share`` (picked / pool) and ``pick_coverage`` (share of the batch's images with at least one
    picked view; ``source`` is the image each pool row was made from); scalars like ``like``."""
    covered = torch.zeros(batch_size, dtype=torch.bool, device=rows.device)
    covered[source.index_select(0, rows)] = True
    return {'picked_share': like.new_full((), rows.shape[0] / pool_size), 'pick_coverage': covered.float().mean()}


def label_disagreement(t_view: torch.Tensor, major: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    """Share of the ``mixed`` view rows whose teacher argmax differs from ``major`` (the larger-area label)."""
    disagree = (t_view.argmax(-1) != major) & mixed
    return disagree.sum() / mixed.sum().clamp(min=1)


class TeacherProbStats:
    """The teacher-only augmentation score, accumulated batch by batch on the logits' device (no host sync).

    ``update(logits, view_logits, target)`` adds one batch: the teacher's softmax (T = 1) of the original
    rows is one block, of the view rows (when there are any) a second block. Once ``chunk`` blocks are
    collected, the mean probability vector of their rows is kept and collection restarts; ``chunk`` None
    is the authors' rule: 10 blocks when batches come with a view, 5 without (five batches either way).

    ``summary()``: ``stddev`` = unbiased standard deviation across the kept vectors, per class, averaged
    over classes (NaN with fewer than two kept vectors); ``entropy`` = mean entropy (nats) of all
    collected rows; ``disagreement`` = share of original rows whose teacher argmax differs from the label.
    """

    def __init__(self, chunk: Optional[int] = None):
        if chunk is not None and chunk < 1:
            raise ValueError(f'chunk must be >= 1 blocks, got {chunk}')
        self.chunk = chunk
        self.kept: List[torch.Tensor] = []
        self._sum: Optional[torch.Tensor] = None
        self._rows = self._blocks = 0
        self._entropy: Optional[torch.Tensor] = None
        self._entropy_rows = 0
        self._wrong: Optional[torch.Tensor] = None
        self._labelled = 0

    @staticmethod
    def _add(total: Optional[torch.Tensor], value: torch.Tensor) -> torch.Tensor:
        return value if total is None else total + value

    @torch.no_grad()
    def update(self, logits: torch.Tensor, view_logits: Optional[torch.Tensor] = None,
               target: Optional[torch.Tensor] = None) -> None:
        blocks = [logits] if view_logits is None else [logits, view_logits]
        for block in blocks:
            p = block.detach().float().softmax(-1)
            self._sum = self._add(self._sum, p.sum(0))
            self._entropy = self._add(self._entropy, -torch.special.xlogy(p, p).sum())
            self._rows += p.shape[0]
            self._entropy_rows += p.shape[0]
            self._blocks += 1
        if target is not None and target.ndim == 1:
            self._wrong = self._add(self._wrong, (logits.argmax(-1) != target).sum())
            self._labelled += target.shape[0]
        if self._blocks >= (self.chunk or (5 if view_logits is None else 10)):
            self.kept.append(self._sum / self._rows)
            self._sum, self._rows, self._blocks = None, 0, 0

    def summary(self) -> Dict[str, float]:
        """{} before any update, else stddev, entropy and disagreement (floats: one host sync)."""
        if not self._entropy_rows:
            return {}
        out = {'stddev': float(torch.stack(self.kept).std(0).mean()) if len(self.kept) > 1 else math.nan,
               'entropy': float(self._entropy) / self._entropy_rows}
        if self._labelled:
            out['disagreement'] = float(self._wrong) / self._labelled
        return out

    def state_dict(self) -> Dict[str, Any]:
        cpu = (lambda t: None if t is None else t.detach().cpu())
        return dict(kept=[cpu(k) for k in self.kept], sum=cpu(self._sum), rows=self._rows, blocks=self._blocks,
                    entropy=cpu(self._entropy), entropy_rows=self._entropy_rows, wrong=cpu(self._wrong),
                    labelled=self._labelled)

    def load_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        dev = (lambda t: None if t is None else t.to(device))
        self.kept = [dev(k) for k in state['kept']]
        self._sum, self._rows, self._blocks = dev(state['sum']), state['rows'], state['blocks']
        self._entropy, self._entropy_rows = dev(state['entropy']), state['entropy_rows']
        self._wrong, self._labelled = dev(state['wrong']), state['labelled']
