"""Model cards (README.md with Hub metadata) of converted teachers and distilled students.

Everything a student card states comes from the run's own records (``results.json``, ``args.yaml`` as
applied, ``summary.csv``): a value the records do not hold is left out, never filled in from a default.
The data set is named as it really was: known data sets by their Hub ids, image folders and other data
by the name / id the user gave (``--dataset-name`` / ``--dataset-id``), otherwise described as a custom
data set with its class and image counts. Model-index results (the Hub's leaderboard metadata) are
written only when the evaluation data set is a Hub data set and its whole split was evaluated.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

import timm

from timm_kd.utils.messages import public_ref
from .io import timm_kd_version

__all__ = ['DatasetInfo', 'KNOWN_DATASETS', 'identify_dataset', 'card_header', 'teacher_card', 'student_card',
           'usage_snippet', 'CITATION', 'TEACHER_CITATION']

#: data sets known by name (timm's ``torch/<name>``, ``hfds/<hub id>``, ``convert --dataset``):
#: key (lower case, no ``-``/``_``) -> (name on the card, Hub dataset id or None)
KNOWN_DATASETS: Dict[str, Tuple[str, Optional[str]]] = {
    'cifar10': ('CIFAR-10', 'uoft-cs/cifar10'),
    'cifar100': ('CIFAR-100', 'uoft-cs/cifar100'),
    'mnist': ('MNIST', 'ylecun/mnist'),
    'fashionmnist': ('Fashion-MNIST', 'zalando-datasets/fashion_mnist'),
    'svhn': ('SVHN', 'ufldl-stanford/svhn'),
    'tinyimagenet': ('Tiny ImageNet', None),  # several community copies on the Hub, none canonical
}

CITATION = '''@inproceedings{wang2022gooddakd,
  title={What Makes a "Good" Data Augmentation in Knowledge Distillation -- A Statistical Perspective},
  author={Wang, Huan and Lohit, Suhas and Jones, Michael and Fu, Yun},
  booktitle={Advances in Neural Information Processing Systems},
  year={2022},
  note={arXiv:2012.02909}
}'''

TEACHER_CITATION = '''@inproceedings{tian2020crd,
  title={Contrastive Representation Distillation},
  author={Tian, Yonglong and Krishnan, Dilip and Isola, Phillip},
  booktitle={International Conference on Learning Representations},
  year={2020}
}'''


@dataclass(frozen=True)
class DatasetInfo:
    """What a card may say about a run's data."""
    name: str  # the data set as the card text names it
    hub_id: Optional[str]  # Hub dataset id, None when the data set is not identified on the Hub
    eval_split: Optional[str]  # the standard split evaluated in full (model-index); None: no split claim
    counts: str  # classes and image counts as recorded, e.g. '10 classes, 50000 training / 10000 test-split images'
    eval_text: str  # what the results were measured on

    @property
    def label(self) -> str:
        """The name, with the Hub id when there is one."""
        return self.name + (f' (`{self.hub_id}` on the Hub)' if self.hub_id and self.hub_id != self.name else '')

    @property
    def text(self) -> str:
        """The name with the counts, for the model details."""
        if not self.counts:
            return self.label
        return f'{self.label} ({self.counts})' if self.label.startswith('a custom') else f'{self.label}, {self.counts}'


def _key(name: str) -> str:
    return name.lower().replace('-', '').replace('_', '')


def _counts(num_classes, train_images, eval_images, eval_word: str = 'evaluation') -> str:
    parts = [f'{num_classes} classes'] if num_classes else []
    if train_images is not None and eval_images is not None:
        parts.append(f'{train_images} training / {eval_images} {eval_word} images')
    return ', '.join(parts)


def _hub_dataset_id(repo: str) -> Optional[str]:
    """``repo`` when it reads as a Hub dataset id (not a local path)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    if not repo or repo.startswith(('.', '/', '~')) or repo.count('/') > 1:
        return None
    try:
        validate_repo_id(repo)
    except HFValidationError:
        return None
    return repo


def identify_dataset(
        results: Dict[str, Any],
        args: Dict[str, Any],
        name: Optional[str] = None,
        dataset_id: Optional[str] = None,
) -> DatasetInfo:
    """Name the data set a run really used, from its records.

    ``name`` / ``dataset_id`` (publish-time flags) win over the ``dataset_name`` / ``dataset_id`` recorded at
    training time; the recorded dataset (``torch/cifar100``, ``hfds/<id>``, an image folder, ...) and image
    counts fill in the rest.
    """
    dataset = str(results.get('dataset') or args.get('dataset') or '')
    name = name or results.get('dataset_name') or args.get('dataset_name')
    dataset_id = dataset_id or results.get('dataset_id') or args.get('dataset_id')
    num_classes = results.get('num_classes') or args.get('num_classes')
    n_train, n_eval = results.get('train_images'), results.get('eval_images')
    val_split = results.get('val_split') or args.get('val_split')
    subset = bool(args.get('val_num_samples'))
    prefix, _, rest = dataset.partition('/') if '/' in dataset else ('', '', dataset)
    prefix = prefix.lower()

    known_name, known_id, split, kind = None, None, None, 'custom image-folder'
    if prefix == 'torch':
        known_name, known_id = KNOWN_DATASETS.get(_key(rest), (f'torchvision {rest}', None))
        # timm reads a torchvision data set's 'train'/'training' split as its train set, any other as its test set
        split, kind = ('train' if str(val_split).lower() in ('train', 'training') else 'test'), None
    elif prefix in ('hfds', 'hfids'):
        known_id = _hub_dataset_id(rest)
        known_name = KNOWN_DATASETS.get(_key(rest.split('/')[-1]), (rest, None))[0] if known_id else None
        split, kind = val_split, (None if known_id else 'custom Hugging Face datasets')
    elif prefix == 'synthetic':
        known_name, kind = f'synthetic random images ({dataset})', None
    elif prefix == 'sklearn':
        known_name, kind = f'scikit-learn digits ({dataset})', None
    elif prefix not in ('', 'folder'):
        kind = f'custom {prefix}'

    label = name or known_name or dataset_id
    if label is None:  # a data set nobody named: describe it, claim nothing
        return DatasetInfo(name=f'a {kind} data set', hub_id=None, eval_split=None,
                           counts=_counts(num_classes, n_train, n_eval),
                           eval_text='the evaluation images of that data set' + (f' ({n_eval} images)' if n_eval else ''))
    hub_id = dataset_id or known_id
    if hub_id and split is None:
        split = val_split
    full_split = bool(split) and not subset
    counts = _counts(num_classes, n_train, n_eval, f'{split}-split' if full_split else 'evaluation')
    n = f'{n_eval} ' if n_eval else ''
    if full_split:
        eval_text = f'the {split} split of {label}' + (f' ({n_eval} images)' if n_eval else '')
    elif split:
        eval_text = f'{n}evaluation images of {label}, a subset of its {split} split (--val-num-samples)'
    else:
        eval_text = f'{n}evaluation images of {label}'
    return DatasetInfo(name=label, hub_id=hub_id, eval_split=split if hub_id and full_split else None, counts=counts,
                       eval_text=eval_text)


def _front_matter(repo_id: str, tags: Sequence[str], info: DatasetInfo, license: str,
                  metrics: Sequence[Tuple[str, str, Optional[float]]]) -> str:
    """YAML metadata built by huggingface_hub (so the Hub accepts it); model-index only for an identified split."""
    from huggingface_hub import EvalResult, ModelCardData
    evals = None
    if info.hub_id and info.eval_split:
        evals = [EvalResult(task_type='image-classification', task_name='Image Classification',
                            dataset_type=info.hub_id, dataset_name=info.name, dataset_split=info.eval_split,
                            metric_type=t, metric_value=round(float(v), 4), metric_name=n)
                 for t, n, v in metrics if v is not None] or None
    data = ModelCardData(model_name=repo_id.split('/')[-1], license=license, library_name='timm',
                         pipeline_tag='image-classification', tags=list(tags),
                         datasets=[info.hub_id] if info.hub_id else None, eval_results=evals)
    return f'---\n{data.to_yaml()}\n---\n'


def card_header(readme: str) -> str:
    """The YAML metadata block of a model card (what the Hub indexes), without the ``---`` fences."""
    if not readme.startswith('---\n'):
        return ''
    return readme[4:].split('\n---\n', 1)[0].strip()


def usage_snippet(model_ref: str, extra: str = '') -> str:
    """Card usage block; it must start with ``import timm_kd``: timm cannot build our models without it."""
    return f'''```python
import timm_kd  # registers timm-kd's CIFAR models in timm; without it create_model fails ("Unknown model")
import timm
import torch

model = timm.create_model('{model_ref}', pretrained=True).eval()
data_cfg = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**data_cfg)  # resize/crop/normalize for this model
with torch.no_grad():
    probs = model(transform(img).unsqueeze(0)).softmax(-1)  # img: a PIL image
```
{extra}'''


def _fmt(v, nd: int = 2) -> str:
    return '–' if v is None else (f'{v:.{nd}f}' if isinstance(v, float) else str(v))


def _params(model: nn.Module) -> str:
    return f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M'


def _input(size) -> str:
    return 'x'.join(map(str, size))


def _software() -> str:
    return f'timm-kd {timm_kd_version()}, timm {timm.__version__}, torch {torch.__version__}'


def teacher_card(
        model: nn.Module,
        repo_id: str,
        *,
        arch: str,
        original_arch: str,
        source: str,
        sha256: str,
        accuracy: Optional[float],
        epoch: Optional[int] = None,
        dataset: str = 'cifar100',
        license: str = 'other',
        origin: str = 'RepDistiller / CRD teacher zoo',
) -> str:
    """Model card of a converted KD teacher (provenance, checksum, reported accuracy, usage).

    ``dataset`` is what the converting user states the teacher was trained on (a :data:`KNOWN_DATASETS` key);
    the accuracy is the one the checkpoint reports about itself on that data set's test split.
    """
    ds_name, ds_id = KNOWN_DATASETS.get(_key(dataset), (dataset, None))
    info = DatasetInfo(name=ds_name, hub_id=ds_id, eval_split='test', counts='', eval_text=f'the test split of {ds_name}')
    org = repo_id.split('/')[0]
    default_org = ' (it is the default organisation)' if org == 'timm-kd' else ''
    at_epoch = f' (epoch {epoch})' if epoch is not None else ''
    size = _input(model.pretrained_cfg.get('input_size', (3, 32, 32)))
    text = _front_matter(
        repo_id, ['image-classification', 'timm', 'timm-kd', 'knowledge-distillation', 'teacher'], info, license,
        [('accuracy', 'Top-1 accuracy (reported by the source checkpoint)', accuracy)])
    text += f'''# Model card for {repo_id.split('/')[-1]}

A {ds_name} **{arch}** classifier, converted unchanged from the {origin} checkpoint of `{original_arch}`,
for use as a knowledge-distillation teacher with timm-kd (`pip install timm-kd`) and timm.

## Model details
- **Architecture:** `{arch}` (RepDistiller name `{original_arch}`), {_params(model)} parameters, registered by `timm_kd`
- **Dataset:** {ds_name}{f' (`{ds_id}` on the Hub)' if ds_id else ''}, {model.num_classes} classes, input {size}
- **Top-1 accuracy:** {_fmt(accuracy)} % as stored in the checkpoint by its training code{at_epoch};
  not re-evaluated during conversion
- **Weights:** `model.safetensors`, converted with {_software()};
  the logits equal the original checkpoint's

## Provenance
- **Source file:** `{source}`
- **Source sha256:** `{sha256}`
- **Original code:** RepDistiller (https://github.com/HobbitLong/RepDistiller); key names are unchanged.
- **License:** the weights were trained and released by the original authors; check their license before
  redistributing them.

## Usage
{usage_snippet('hf-hub:' + repo_id)}
The registered name resolves to this repo when `TIMM_KD_HUB_ORG={org}` is set before `import timm_kd`{default_org}:

```python
import timm_kd, timm
teacher = timm.create_model('{arch}', pretrained=True)  # or: timm_kd.distill.teacher.create_teacher('{arch}')
```
and `train_kd.py --teacher {arch}` uses it as the default teacher weights.

## Citation
The teacher zoo was released with RepDistiller:
```bibtex
{TEACHER_CITATION}
```
'''
    return text


def _short(v) -> str:
    try:
        f = float(v)
        return f'{f:.4g}' if not f.is_integer() else str(int(f))
    except (TypeError, ValueError):
        return str(v)


def _log_table(rows: List[Dict[str, Any]]) -> str:
    """About ten rows of summary.csv, always with the last epoch."""
    head = list(rows[0].keys())
    step = max(1, len(rows) // 10)
    picked = rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])
    text = '\n## Training log (`summary.csv`{})\n| {} |\n|{}\n'.format(
        f', every {step}th epoch' if step > 1 else '', ' | '.join(head), '---|' * len(head))
    return text + ''.join('| ' + ' | '.join(_short(row.get(h)) for h in head) + ' |\n' for row in picked)


def _method(results: Dict[str, Any], args: Dict[str, Any]) -> Tuple[str, str]:
    """(the distillation method of a run, its recorded settings as text); runs from before ``--distill`` are KD."""
    record = results.get('distill') if isinstance(results.get('distill'), dict) else {}
    method = str(record.get('method') or args.get('distill') or 'kd')
    settings = ', '.join(f'{k} {_short(v)}' for k, v in record.items() if k != 'method' and not isinstance(v, dict))
    return method, settings


def student_card(
        model: nn.Module,
        repo_id: str,
        *,
        results: Dict[str, Any],
        args: Dict[str, Any],
        which: str,
        epoch: Optional[int],
        summary_rows: Optional[list] = None,
        license: str = 'apache-2.0',
        ema: bool = False,
        dataset: Optional[DatasetInfo] = None,
) -> str:
    """Model card of a trained student: data set, lineage, recipe, best and last results, usage.

    ``dataset`` defaults to :func:`identify_dataset` of the records.
    """
    info = dataset or identify_dataset(results, args)
    arch = results.get('model') or args.get('model')
    teacher = results.get('teacher') or args.get('teacher')
    r = {k: results.get(k) for k in ('best_top1', 'best_top5', 'best_epoch', 'last_top1', 'last_top5', 'last_epoch',
                                     'teacher_top1')}
    metrics = [('accuracy', 'Top-1 accuracy (best epoch)', r['best_top1']),
               ('top_5_accuracy', 'Top-5 accuracy (best epoch)', r['best_top5']),
               ('accuracy', 'Top-1 accuracy (last epoch)', r['last_top1']),
               ('top_5_accuracy', 'Top-5 accuracy (last epoch)', r['last_top5'])]
    tags = ['image-classification', 'timm', 'timm-kd'] + (['knowledge-distillation'] if teacher else [])
    text = _front_matter(repo_id, tags, info, license, metrics)

    if teacher:
        t_src = public_ref(results.get('teacher_source') or results.get('teacher_checkpoint')
                           or args.get('teacher_checkpoint'))
        t_acc = f', top-1 {_fmt(r["teacher_top1"])} % on the same evaluation images' if r['teacher_top1'] is not None else ''
        teacher_line = f'`{teacher}`{t_acc}' + (f' (weights: `{t_src}`)' if t_src else ' (weights not recorded)')
        t_input = results.get('teacher_input_size')  # runs made before it was recorded have none
        if t_input:
            resized = list(t_input) != list((results.get('data_config') or {}).get('input_size') or [])
            teacher_line += f', input {_input(t_input)}' + (" (the student's images resized for it)" if resized else '')
        method, settings = _method(results, args)
        how = 'with knowledge distillation' if method == 'kd' else \
            f'with the **{method.upper()}** distillation method (`--distill {method}`)'
        how += f' from a **{teacher}** teacher'
        method_line = f'\n- **Distillation method:** `{method}`' + (f' ({settings})' if settings else '')
    else:
        teacher_line, how = 'none (plain training with the data set\'s labels)', 'without a teacher'
        method_line = ''
    input_size = (results.get('data_config') or {}).get('input_size')
    published = f'{which} epoch' + (f' (epoch {epoch})' if epoch is not None else '')
    published += ', exponential moving average (EMA) of the weights, which is what was evaluated' if ema else ''
    best_at = f" ({r['best_epoch']})" if r['best_epoch'] is not None else ''
    last_at = f" ({r['last_epoch']})" if r['last_epoch'] is not None else ''
    recipe = '\n'.join(f'- **{k}:** `{v}`' for k, v in (results.get('recipe') or {}).items())
    teacher_row = f"| teacher `{teacher}` | {_fmt(r['teacher_top1'])} | {_fmt(results.get('teacher_top5'))} |\n" \
        if teacher else ''
    text += f'''# Model card for {repo_id.split('/')[-1]}

A **{arch}** image classifier trained {how} on {info.label}, using timm-kd (`pip install timm-kd`).

## Model details
- **Architecture:** `{arch}`, {_params(model)} parameters, registered by `timm_kd`
- **Dataset:** {info.text}{f', input {_input(input_size)}' if input_size else ''}
- **Teacher:** {teacher_line}{method_line}
- **Published weights:** {published}; `model.safetensors` only
- **Exported with:** {_software()}

## Results
Measured on {info.eval_text}.

| weights | top-1 (%) | top-5 (%) |
|---|---|---|
| best epoch{best_at} | {_fmt(r['best_top1'])} | {_fmt(r['best_top5'])} |
| last epoch{last_at} | {_fmt(r['last_top1'])} | {_fmt(r['last_top5'])} |
{teacher_row}'''
    if recipe:
        text += f'\n## Training recipe (from `training/results.json`)\n{recipe}\n'
    text += f'''
The full arguments are below and in `training/args.yaml`; `training/summary.csv` has the per-epoch log.
Reproduce with `timm-kd-train --config training/args.yaml --data-dir <your data>` (several GPUs:
`accelerate launch train_kd.py` with the same flags).

## Usage
{usage_snippet('hf-hub:' + repo_id)}
'''
    if summary_rows:
        text += _log_table(summary_rows)
    if args:
        import yaml
        text += f"\n## Training arguments\n```yaml\n{yaml.safe_dump(args, sort_keys=True).strip()}\n```\n"
    text += f'\n## Citation\n```bibtex\n{CITATION}\n```\n'
    return text
