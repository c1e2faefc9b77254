"""The command line of ``train_kd.py``: timm train.py's flags plus the KD group, their choices and help.

Shared flags keep timm's names, defaults and meanings (``--sched cosine``, ``--smoothing 0.1``,
``--weight-decay 2e-5``, ``--lr`` from ``--lr-base`` when unset, ...). The choices of ``--distill``,
``--pick`` and ``--tl-aug`` are read from their tables. How values are layered and checked is
``timm_kd.train.args``.
"""
import argparse
import ast
import os
import sys
import time
from typing import Dict, Set

from timm_kd.data.pick import PICK_CRITERIA
from timm_kd.data.views import sample_view_names
from timm_kd.distill.methods import METHODS
from timm_kd.distill.task import VIEW_LOSSES

__all__ = ['build_parser', 'is_main_process_env', 'report_error', 'ParseKwargs', 'METHOD_FLAG_DESTS',
           'STD_AUG_MODES', 'PICK_CHOICES', 'SCHEDULERS', 'LARGE_INPUT_AUG_FLAGS', 'PEER_REPORT_DELAY',
           'TIMM_DISTILL_TYPES']

STD_AUG_MODES = ('none', 'flip', 'crop', 'crop_flip')
PICK_CHOICES = ('none',) + tuple(PICK_CRITERIA)
SCHEDULERS = ('cosine', 'tanh', 'step', 'multistep', 'multistep_torch', 'poly', 'wsd', 'rsqrt', 'constant',
              'plateau', 'none')
# timm train.py's --kd-distill-type -> our --distill (the same method, its timm spelling)
TIMM_DISTILL_TYPES = {'logit': 'kd', 'feature': 'feature', 'token': 'token'}
# timm's ImageNet train-transform flags: only meaningful for inputs >= 128 px (timm create_transform).
LARGE_INPUT_AUG_FLAGS = ('scale', 'ratio', 'hflip', 'vflip', 'color_jitter', 'aa', 'reprob', 'remode', 'recount',
                         'train_interpolation')


class ParseKwargs(argparse.Action):
    """``k=v`` pairs into a dict, values read as Python literals where they are (timm's ParseKwargs, but a
    malformed pair is an argparse error rather than a traceback)."""

    def __call__(self, parser, namespace, values, option_string=None):
        kw = {}
        for item in values:
            key, sep, value = item.partition('=')
            if not sep or not key:
                raise argparse.ArgumentError(self, f'expected key=value pairs, got {item!r}')
            try:
                kw[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                kw[key] = str(value)
        setattr(namespace, self.dest, kw)


def _add(group, *names, **kw):
    group.add_argument(*names, **kw)


def is_main_process_env() -> bool:
    """Whether this is the main process of a launched run (or not launched at all), from the launcher's env."""
    return os.environ.get('RANK', os.environ.get('LOCAL_RANK', '0')) in ('0', '')


PEER_REPORT_DELAY = 10.0  # seconds another process waits before printing an error the main process may print


def report_error(line: str) -> None:
    """Print a user error once per launched run: every process usually meets it at the same moment (same flags,
    same files), the main process prints at once and its exit makes the launcher end the others; another process
    prints only if it is still running after ``PEER_REPORT_DELAY`` (an error that process alone met). Without the
    delay, a peer that exits first gets the main process terminated before it has printed."""
    if not is_main_process_env():
        time.sleep(PEER_REPORT_DELAY)
    print(line, file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (no usage block), printed once per launched run (``report_error``)."""

    def error(self, message: str):
        report_error(f'{self.prog}: error: {message}')
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog='train_kd.py',
        description='Train a timm model with knowledge distillation (KD, TLmixup, TLCutMix, TLCutMix+pick) '
                    'or plainly with cross-entropy (no --teacher). Run with `accelerate launch` for N processes.')
    _add(p, '-c', '--config', default='', metavar='FILE', help='YAML file of flag defaults (keys = flag dests)')

    g = p.add_argument_group('Dataset parameters')
    _add(g, '--data-dir', metavar='DIR', default=None, help='dataset root directory')
    _add(g, '--dataset', metavar='NAME', default='',
         help='timm dataset name: torch/cifar100, torch/cifar10, hfds/<repo>, an image folder (empty), '
              'sklearn/digits, synthetic/<classes>x<size>')
    _add(g, '--train-split', metavar='NAME', default='train', help='train split (default: train)')
    _add(g, '--val-split', metavar='NAME', default='validation',
         help='eval split (default: validation; CIFAR: the test set)')
    _add(g, '--dataset-download', action='store_true', default=False, help='download torch/ datasets if missing')
    _add(g, '--class-map', default='', metavar='FILENAME', help='class to index mapping file')
    _add(g, '--train-num-samples', type=int, default=None, metavar='N',
         help='train on a seeded, class-stratified subset of N samples (synthetic/: generate N)')
    _add(g, '--val-num-samples', type=int, default=None, metavar='N',
         help='evaluate on a seeded, class-stratified subset of N samples')
    _add(g, '--input-key', default=None, help='image key of hfds/ datasets (e.g. img)')
    _add(g, '--target-key', default=None, help='label key of hfds/ datasets (e.g. fine_label)')
    # how a published model card names the data (recorded in results.json; timm-kd-publish can change them)
    _add(g, '--dataset-name', default=None, metavar='NAME', help='name of the data set on model cards')
    _add(g, '--dataset-id', default=None, metavar='ID', help='Hub dataset id of the data, e.g. me/flowers')

    g = p.add_argument_group('Model parameters')
    _add(g, '--model', default='resnet50', metavar='MODEL', help='student model name (default: resnet50)')
    _add(g, '--pretrained', action='store_true', default=False, help='start from the pretrained student weights')
    _add(g, '--initial-checkpoint', default='', metavar='PATH', help='initialize the student from this checkpoint')
    _add(g, '--resume', default='', metavar='PATH',
         help='resume model, optimizer, schedule, RNG and position from a checkpoint file or a run directory')
    _add(g, '--no-resume-opt', action='store_true', default=False, help='do not resume the optimizer state')
    _add(g, '--num-classes', type=int, default=None, metavar='N', help='number of classes (default: dataset)')
    _add(g, '--gp', default=None, metavar='POOL', help='global pool type (model default if None)')
    _add(g, '--img-size', type=int, default=None, metavar='N', help='image size (default: dataset recipe)')
    _add(g, '--in-chans', type=int, default=None, metavar='N', help='input channels (default: 3)')
    _add(g, '--input-size', default=None, nargs=3, type=int, metavar=('C', 'H', 'W'), help='input C H W')
    _add(g, '--crop-pct', default=None, type=float, metavar='N', help='eval centre crop pct (inputs >= 128 px)')
    _add(g, '--mean', type=float, nargs='+', default=None, metavar='MEAN', help='override dataset mean')
    _add(g, '--std', type=float, nargs='+', default=None, metavar='STD', help='override dataset std')
    _add(g, '--interpolation', default='', metavar='NAME', help='resize interpolation')
    _add(g, '-b', '--batch-size', type=int, default=128, metavar='N', help='batch size per process (default: 128)')
    _add(g, '-vb', '--validation-batch-size', type=int, default=None, metavar='N', help='eval batch size')
    _add(g, '--channels-last', action='store_true', default=False, help='channels_last memory layout')
    _add(g, '--grad-checkpointing', action='store_true', default=False, help='gradient checkpointing')
    _add(g, '--model-kwargs', nargs='*', default={}, action=ParseKwargs, help='extra create_model kwargs k=v')
    _add(g, '--torchcompile', nargs='?', type=str, default=None, const='inductor',
         help='torch.compile the student (and teacher) with this backend (default: inductor)')
    _add(g, '--drop', type=float, default=0.0, metavar='PCT', help='dropout rate')
    _add(g, '--drop-path', type=float, default=None, metavar='PCT', help='drop path rate')

    g = p.add_argument_group('Optimizer parameters')
    _add(g, '--opt', default='sgd', metavar='OPTIMIZER',
         help='timm optimizer name (default: sgd = Nesterov SGD; momentum = classic SGD as in CRD)')
    _add(g, '--opt-eps', default=None, type=float, metavar='EPSILON')
    _add(g, '--opt-betas', default=None, type=float, nargs='+', metavar='BETA')
    _add(g, '--momentum', type=float, default=0.9, metavar='M', help='momentum (default: 0.9)')
    _add(g, '--weight-decay', type=float, default=2e-5, help='weight decay (default: 2e-5)')
    _add(g, '--wd-all-params', action='store_true', default=False,
         help='apply weight decay to every parameter incl. biases and norm layers (CRD/RepDistiller recipe); '
              'timm excludes 1-d parameters by default')
    _add(g, '--clip-grad', type=float, default=None, metavar='NORM', help='clip gradient norm (default: off)')
    _add(g, '--clip-mode', type=str, default='norm', help='clip mode: norm, value, agc')
    _add(g, '--layer-decay', type=float, default=None, help='layer-wise lr decay')
    _add(g, '--opt-kwargs', nargs='*', default={}, action=ParseKwargs, help='extra optimizer kwargs k=v')

    g = p.add_argument_group('Learning rate schedule parameters')
    _add(g, '--sched', type=str, default='cosine', choices=SCHEDULERS, metavar='SCHEDULER',
         help='lr schedule (default: cosine). multistep = timm (decays at epoch index m-1); multistep_torch = '
              'torch MultiStepLR / CRD (lr x decay-rate from epoch index m on, i.e. after m epochs)')
    _add(g, '--sched-on-updates', action='store_true', default=False, help='step the schedule per update')
    _add(g, '--lr', type=float, default=None, metavar='LR', help='learning rate (default: from --lr-base)')
    _add(g, '--lr-base', type=float, default=0.1, metavar='LR', help='lr = lr_base * global_batch / lr_base_size')
    _add(g, '--lr-base-size', type=int, default=256, metavar='DIV')
    _add(g, '--lr-base-scale', type=str, default='', metavar='SCALE', help='linear or sqrt (default: by opt)')
    _add(g, '--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct')
    _add(g, '--lr-noise-pct', type=float, default=0.67, metavar='PERCENT')
    _add(g, '--lr-noise-std', type=float, default=1.0, metavar='STDDEV')
    _add(g, '--lr-cycle-mul', type=float, default=1.0, metavar='MULT')
    _add(g, '--lr-cycle-decay', type=float, default=0.5, metavar='MULT')
    _add(g, '--lr-cycle-limit', type=int, default=1, metavar='N')
    _add(g, '--lr-k-decay', type=float, default=1.0)
    _add(g, '--warmup-lr', type=float, default=1e-5, metavar='LR', help='warmup start lr (default: 1e-5)')
    _add(g, '--min-lr', type=float, default=0, metavar='LR', help='lr floor of cyclic schedules (default: 0)')
    _add(g, '--epochs', type=int, default=300, metavar='N', help='epochs to train (default: 300)')
    _add(g, '--epoch-scale', type=float, default=1.0, metavar='K',
         help='multiply --epochs, --decay-milestones and --decay-epochs by K (int(x*K), as CRD\'s epoch_factor; '
              'warmup and cooldown stay)')
    _add(g, '--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES',
         help='multistep milestones (epochs), see --sched for the two conventions')
    _add(g, '--decay-epochs', type=float, default=90, metavar='N', help='epoch interval of the step schedule')
    _add(g, '--warmup-epochs', type=int, default=5, metavar='N', help='warmup epochs (default: 5)')
    _add(g, '--warmup-prefix', action='store_true', default=False, help='exclude warmup from the decay schedule')
    _add(g, '--cooldown-epochs', type=int, default=0, metavar='N')
    _add(g, '--patience-epochs', type=int, default=10, metavar='N')
    _add(g, '--decay-rate', '--dr', type=float, default=0.1, metavar='RATE', help='lr decay rate (default: 0.1)')

    g = p.add_argument_group('Augmentation and regularization parameters')
    _add(g, '--std-aug', default='crop_flip', choices=STD_AUG_MODES,
         help='standard train augmentation: none, flip, crop, crop_flip (pad + random crop + flip; default)')
    _add(g, '--crop-padding', type=int, default=None, metavar='PX',
         help='random-crop padding (default: dataset recipe, CIFAR 4, Tiny ImageNet 8)')
    _add(g, '--no-aug', action='store_true', default=False, help='disable train augmentation (= --std-aug none)')
    _add(g, '--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT', help='(inputs >= 128 px)')
    _add(g, '--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO', help='(inputs >= 128 px)')
    _add(g, '--hflip', type=float, default=0.5, help='(inputs >= 128 px)')
    _add(g, '--vflip', type=float, default=0., help='(inputs >= 128 px)')
    _add(g, '--color-jitter', type=float, default=0.4, metavar='PCT', help='(inputs >= 128 px)')
    _add(g, '--aa', type=str, default=None, metavar='NAME', help='AutoAugment policy (inputs >= 128 px)')
    _add(g, '--reprob', type=float, default=0., metavar='PCT', help='random erase prob (inputs >= 128 px)')
    _add(g, '--remode', type=str, default='pixel', help='(inputs >= 128 px)')
    _add(g, '--recount', type=int, default=1, help='(inputs >= 128 px)')
    _add(g, '--train-interpolation', type=str, default='random', help='(inputs >= 128 px)')
    _add(g, '--mixup', type=float, default=0.0, help='timm mixup alpha on the training batch itself')
    _add(g, '--cutmix', type=float, default=0.0, help='timm cutmix alpha on the training batch itself')
    _add(g, '--cutmix-minmax', type=float, nargs='+', default=None)
    _add(g, '--mixup-prob', type=float, default=1.0, help='probability of mixing a batch (or pair / element)')
    _add(g, '--mixup-switch-prob', type=float, default=0.5, help='probability of cutmix when both are enabled')
    _add(g, '--mixup-mode', type=str, default='batch', help='batch, pair or elem')
    _add(g, '--mixup-off-epoch', default=0, type=int, metavar='N', help='turn timm mixup off from this epoch')
    _add(g, '--smoothing', type=float, default=0.1, help='label smoothing of the CE term (default: 0.1)')

    g = p.add_argument_group('Knowledge distillation parameters')
    _add(g, '--teacher', default=None, metavar='MODEL',
         help='teacher: registered name (with --teacher-checkpoint or its Hub weights), hf-hub:org/repo, '
              'local-dir:PATH. Without it the student trains with cross-entropy only')
    _add(g, '--kd-model-name', default=None, metavar='MODEL', help="timm's name for --teacher (timm train.py)")
    _add(g, '--teacher-checkpoint', default=None, metavar='PATH',
         help='teacher weights (timm, RepDistiller, mdistiller or Good-DA format; or hf-hub:org/repo/file)')
    _add(g, '--teacher-input-size', type=int, nargs='+', default=None, metavar='N',
         help='image size the teacher takes, N or H W: x and its views are resized to it on the device for the '
              'teacher only (bilinear, antialiased). Default: the size in the teacher\'s pretrained config when its '
              'weights come with it (hf-hub:, local-dir:, a registered name\'s own weights); with '
              '--teacher-checkpoint the student\'s')
    _add(g, '--tl-mixup', type=float, nargs='?', const=1.0, default=0.0, metavar='ALPHA',
         help='TLmixup: add a teacher-labelled mixup view, lambda ~ Beta(ALPHA, ALPHA) (default ALPHA 1)')
    _add(g, '--tl-cutmix', type=float, nargs='?', const=1.0, default=0.0, metavar='ALPHA',
         help='TLCutMix: add a teacher-labelled CutMix view (default ALPHA 1)')
    _add(g, '--cutmix-hard', type=float, nargs='?', const=1.0, default=0.0, metavar='ALPHA',
         help='KD+CutMix baseline: a CutMix view trained with the hard CutMix labels instead of the teacher')
    _add(g, '--cutout', type=int, nargs='?', const=-1, default=0, metavar='SIZE',
         help='add a teacher-labelled Cutout view (hole side SIZE px; no value = the mixer default)')
    _add(g, '--pick', default='none', choices=PICK_CHOICES,
         help='pick the most informative mixed views: ' + '; '.join(
             f'{name}: {c.description}' for name, c in PICK_CRITERIA.items()))
    _add(g, '--pick-candidates', type=int, default=2, metavar='N', help='candidate pool = N x batch (default 2)')
    _add(g, '--pick-ratio', type=float, default=0.5, metavar='R', help='share of the pool kept (default 0.5)')
    _add(g, '--mix-pairing', default='derangement', choices=('derangement', 'random', 'flip'),
         help='partner of each image in a mixed view: derangement (paper: random, never itself), random, '
              'flip (timm: i with B-1-i, needs an even batch)')
    _add(g, '--mix-fraction', type=float, default=1.0, metavar='F',
         help='share of the batch that gets a mixed view (partial mixup, Choi et al.; default 1.0)')
    # teacher-labelled per-sample views (timm_kd/data/views.py, docs/views.md)
    _add(g, '--tl-aug', default=None, metavar='POLICY',
         help='add a teacher-labelled per-sample view made in the loader from each image: '
              f'{", ".join(n for n in sample_view_names() if n not in ("rand", "augmix"))} or a timm --aa '
              'policy string (rand-m9-mstd0.5, augmix-m3-w3, ...). With --tl-mixup/--tl-cutmix/--cutout the '
              'mixing is applied to this view')
    _add(g, '--kd-temperature', type=float, default=4.0, metavar='T',
         help='KD softmax temperature (default 4, as timm)')
    _add(g, '--kd-alpha', type=float, default=None, metavar='A',
         help='paper alpha: loss = (1-A) CE + A KL (default 0.9); --task-loss-weight overrides the CE weight')
    _add(g, '--distill-loss-weight', type=float, default=None, metavar='W',
         help='timm meaning: KL weight, independent of the CE weight (which then defaults to 1)')
    _add(g, '--task-loss-weight', type=float, default=None, metavar='W',
         help='CE weight gamma (alone: KL weight = 1 - gamma, as timm)')
    _add(g, '--mixed-kd-weight', type=float, default=1.0, metavar='W',
         help='weight w of the mixed-view KL relative to the KL on x (default 1)')
    _add_method_args(p)

    g = p.add_argument_group('Distributed, batch norm and EMA parameters')
    _add(g, '--dist-bn', type=str, default='reduce', choices=('reduce', 'broadcast', ''),
         help='sync BatchNorm statistics across processes after each epoch (default: reduce)')
    _add(g, '--no-ddp-bb', action='store_true', default=False, help='do not broadcast buffers in DDP')
    _add(g, '--model-ema', action='store_true', default=False, help='track an EMA of the student weights')
    _add(g, '--model-ema-decay', type=float, default=0.9998, help='EMA decay (default: 0.9998)')
    _add(g, '--model-ema-warmup', action='store_true', default=False, help='EMA decay warmup')

    g = p.add_argument_group('Miscellaneous parameters')
    _add(g, '--seed', type=int, default=42, metavar='S', help='random seed (default: 42)')
    _add(g, '--log-interval', type=int, default=50, metavar='N', help='steps between progress lines')
    _add(g, '--checkpoint-every', type=int, default=0, metavar='N',
         help='also write recovery.pth.tar every N steps inside an epoch (default: 0 = epoch ends only)')
    _add(g, '--checkpoint-hist', type=int, default=10, metavar='N',
         help='keep the N best checkpoint-<epoch>.pth.tar (default: 10; 0 = none)')
    _add(g, '-j', '--workers', type=int, default=4, metavar='N', help='data loader workers per process')
    _add(g, '--pin-mem', action='store_true', default=False, help='pin data loader memory')
    _add(g, '--amp', action='store_true', default=False, help='mixed precision (accelerate mixed_precision)')
    _add(g, '--amp-dtype', default='float16', type=str, choices=('float16', 'bfloat16'),
         help='AMP dtype: float16 -> fp16, bfloat16 -> bf16')
    _add(g, '--output', default='', type=str, metavar='PATH', help='output root (default: ./output/train)')
    _add(g, '--experiment', default='', type=str, metavar='NAME', help='run sub-folder name')
    _add(g, '--eval-metric', default='top1', type=str, choices=('top1', 'top5', 'loss'),
         help='metric that picks model_best (default: top1)')
    _add(g, '--push-to-hub', default=None, metavar='REPO', help='publish the student to this Hub repo after training')
    _add(g, '--hub-private', action='store_true', default=False, help='create the Hub repo private')
    return p


# dests of each method's own flags, filled by _add_method_args (to reject flags of another method)
METHOD_FLAG_DESTS: Dict[str, Set[str]] = {}


def _add_method_args(p: argparse.ArgumentParser) -> None:
    """--distill NAME from the methods table, the flags shared by the logit methods, and each registered
    method's own flags (``Distiller.add_args``)."""
    g = p.add_argument_group('Distillation method parameters')
    _add(g, '--distill', default='kd', choices=sorted(METHODS), metavar='METHOD',
         help=f'distillation method, one of {sorted(METHODS)} (default kd); its published CE / logit-term '
              f'weights apply unless --kd-alpha / --task-loss-weight / --distill-loss-weight are given')
    _add(g, '--kd-distill-type', default=None, choices=tuple(TIMM_DISTILL_TYPES),
         help="timm's name for --distill (timm train.py): " + ', '.join(
             f'{k} = --distill {v}' for k, v in TIMM_DISTILL_TYPES.items()) + ' (default: from --distill)')
    _add(g, '--kd-loss-type', default='kl', choices=('kl',),
         help="timm's loss of --kd-distill-type logit: kl, the only one timm has (default kl)")
    _add(g, '--view-loss', default='kl', choices=VIEW_LOSSES,
         help="loss on the teacher-labelled views: kl (default, the authors' rule for every method) or method "
              "(the logit method's own loss, e.g. DKD on the views)")
    _add(g, '--logit-std', action='store_true', default=False,
         help='logit standardization (Sun et al. 2024): z-score the logits before the softmax (kd, dkd); '
              'KD weights default to CE 0.1, KL 9')
    _add(g, '--logit-std-temp', type=float, default=2.0, metavar='T',
         help='base temperature of --logit-std, used instead of --kd-temperature (default 2)')
    for name, cls in METHODS.items():
        before = len(g._group_actions)
        cls.add_args(g)
        METHOD_FLAG_DESTS[name] = {a.dest for a in g._group_actions[before:]}
