"""Feature space of trained models (Choi et al., partial mixup): penultimate features, V-score of k-means
clusters, 2-D embeddings. ``python -m timm_kd.features CKPT... --dataset NAME --groups ...``.

    python -m timm_kd.features output/train/teacher_ce output/train/teacher_mixup --dataset torch/cifar100 \\
        --data-dir data --groups 'similar=3,42,72;different=0,8,58' --embed tsne

Choi et al. compare students and teachers trained with and without mixup by how well the penultimate
features of a few classes separate: k-means with one cluster per class, scored by the V-measure
(Rosenberg & Hirschberg, 2007) of the clusters against the true classes, on a group of *similar* classes
(e.g. cat / dog) and a group of *different* ones. Mixup tends to make the clusters of similar classes
merge (lower V-score), which the authors relate to a worse teacher for KD.

V-measure, from the contingency table n_ck (class c, cluster k, N samples)::

    H(C) = -sum_c n_c/N log(n_c/N)             H(C|K) = -sum_ck n_ck/N log(n_ck/n_k)
    homogeneity h = 1 - H(C|K)/H(C)            completeness c = 1 - H(K|C)/H(K)   (1 when H(.) = 0)
    V = (1 + beta) h c / (beta h + c)          (0 when h + c = 0; beta = 1)

For every model (a train_kd.py run folder, a checkpoint file with ``--model NAME``, or ``hf-hub:`` /
``local-dir:``) the command extracts the penultimate features (``forward_head(pre_logits=True)``) of the
images of the chosen classes on the train and test split (eval transform, no augmentation), runs k-means
with one cluster per class on each group and prints the homogeneity, completeness and V-score; it writes
``vscore.md``/``vscore.json`` and a 2-D embedding per model (``embedding_<model>.png/.svg``, PCA or t-SNE)
into ``--output``. Data flags mean what they mean in train_kd.py; without ``--dataset`` the first run
folder's data settings are used.
"""
import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from timm_kd.data.datasets import create_kd_dataset
from timm_kd.data.transforms import create_kd_transform
from timm_kd.experiments.plotting import STYLE, pyplot, save_figure
from timm_kd.train.args import load_flag_file
from timm_kd.train.build import DataConfig, resolve_data_config
from timm_kd.utils.errors import UsageError
from timm_kd.utils.files import atomic_write_text, output_error
from timm_kd.utils.messages import first_line

__all__ = ['v_measure', 'extract_features', 'cluster_v_score', 'embed_2d', 'plot_embeddings', 'parse_groups',
           'load_model', 'format_scores', 'build_parser', 'run', 'main']


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _conditional_entropy(table: np.ndarray, given_axis: int) -> float:
    """H(X | Y) of a contingency table, Y on ``given_axis``."""
    n = table.sum()
    given = table.sum(axis=1 - given_axis, keepdims=True)
    nz = table > 0
    ratio = np.divide(table, given, out=np.ones_like(table, dtype=float), where=nz)
    return float(-(table[nz] / n * np.log(ratio[nz])).sum())


def v_measure(labels_true: Sequence[int], labels_pred: Sequence[int], beta: float = 1.0
              ) -> Tuple[float, float, float]:
    """(homogeneity, completeness, V-measure) of a clustering against true labels, from the definitions."""
    labels_true, labels_pred = np.asarray(labels_true), np.asarray(labels_pred)
    if labels_true.shape != labels_pred.shape or labels_true.ndim != 1:
        raise ValueError(f'labels must be two 1-d arrays of one length, got {labels_true.shape} and '
                         f'{labels_pred.shape}')
    classes, ci = np.unique(labels_true, return_inverse=True)
    clusters, ki = np.unique(labels_pred, return_inverse=True)
    table = np.zeros((len(classes), len(clusters)), dtype=float)
    np.add.at(table, (ci, ki), 1.0)
    h_c, h_k = _entropy(table.sum(axis=1)), _entropy(table.sum(axis=0))
    homogeneity = 1.0 if h_c == 0 else 1.0 - _conditional_entropy(table, given_axis=1) / h_c
    completeness = 1.0 if h_k == 0 else 1.0 - _conditional_entropy(table, given_axis=0) / h_k
    if homogeneity + completeness == 0:
        return homogeneity, completeness, 0.0
    v = (1 + beta) * homogeneity * completeness / (beta * homogeneity + completeness)
    return homogeneity, completeness, v


@torch.no_grad()
def extract_features(model: torch.nn.Module, loader, device: str = 'cpu') -> Tuple[np.ndarray, np.ndarray]:
    """Penultimate features (timm's ``forward_head(pre_logits=True)``) and labels of every batch."""
    model.eval().to(device)
    feats, labels = [], []
    for x, y in loader:
        f = model.forward_head(model.forward_features(x.to(device)), pre_logits=True)
        feats.append(f.flatten(1).float().cpu().numpy())
        labels.append(np.asarray(y))
    return np.concatenate(feats), np.concatenate(labels)


def cluster_v_score(features: np.ndarray, labels: np.ndarray, classes: Sequence[int], seed: int = 0
                    ) -> Dict[str, Any]:
    """k-means with one cluster per class on the samples of ``classes``; their V-measure against the labels."""
    from sklearn.cluster import KMeans
    keep = np.isin(labels, classes)
    if len(set(labels[keep].tolist())) < len(classes):
        missing = sorted(set(classes) - set(labels[keep].tolist()))
        raise ValueError(f'no samples of class(es) {missing}')
    clusters = KMeans(n_clusters=len(classes), n_init=10, random_state=seed).fit_predict(features[keep])
    h, c, v = v_measure(labels[keep], clusters)
    return dict(homogeneity=h, completeness=c, v_score=v, samples=int(keep.sum()))


def embed_2d(features: np.ndarray, method: str = 'pca', seed: int = 0) -> np.ndarray:
    """A 2-D embedding of the features: PCA, or t-SNE (scikit-learn) for non-linear structure."""
    if method == 'pca':
        from sklearn.decomposition import PCA
        return PCA(n_components=2, random_state=seed).fit_transform(features)
    if method == 'tsne':
        from sklearn.manifold import TSNE
        return TSNE(n_components=2, init='pca', random_state=seed,
                    perplexity=min(30.0, max(2.0, (len(features) - 1) / 3))).fit_transform(features)
    raise ValueError(f'unknown embedding {method!r}: use pca or tsne')


def plot_embeddings(points: Dict[str, Tuple[np.ndarray, np.ndarray]], title: str, path_stem: str) -> List[str]:
    """One panel per split (name -> (2-D points, labels)), coloured by class; PNG and SVG."""
    plt = pyplot()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(points), figsize=(3.4 * len(points), 3.2), squeeze=False)
        for ax, (split, (xy, y)) in zip(axes[0], points.items()):
            for i, c in enumerate(sorted(set(y.tolist()))):
                sel = y == c
                ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.7, color=plt.cm.tab10(i % 10),
                           label=str(c), lw=0)
            ax.set(title=split, xticks=[], yticks=[])
            ax.grid(False)
        axes[0][-1].legend(loc='center left', bbox_to_anchor=(1.0, 0.5), markerscale=2, title='class')
        fig.suptitle(title, fontsize=9)
        return save_figure(fig, os.path.dirname(path_stem), os.path.basename(path_stem))


# ---------------------------------------------------------------------------------------------------------------
# command line

RUN_WEIGHTS = {'best': 'model_best.pth.tar', 'last': 'last.pth.tar'}


def parse_groups(text: str) -> Dict[str, List[int]]:
    """``'similar=3,5;different=0,1'`` -> {'similar': [3, 5], 'different': [0, 1]}."""
    groups = {}
    for part in filter(None, (p.strip() for p in text.split(';'))):
        name, sep, classes = part.partition('=')
        try:
            ids = [int(c) for c in classes.split(',') if c.strip()]
        except ValueError:
            ids = []
        if not sep or not name.strip() or len(ids) < 2 or len(set(ids)) != len(ids):
            raise UsageError(f'--groups expects NAME=C1,C2[,...] with at least two distinct class indices per '
                             f'group, separated by ";", got {part!r}.')
        groups[name.strip()] = ids
    return groups


def _is_run(ref: str) -> bool:
    return os.path.isfile(os.path.join(ref, 'args.yaml'))


class _Data(NamedTuple):
    """Where the images come from (train_kd's data flags) and how they look (``DataConfig``)."""
    dataset: str
    data_dir: Optional[str]
    download: bool
    train_split: str
    val_split: str
    config: DataConfig


def _data(args: argparse.Namespace) -> _Data:
    """train_kd's data settings: the first run folder's args.yaml (without --dataset), then the flags given here."""
    run = load_flag_file(os.path.join(args.checkpoints[0], 'args.yaml'), 'The run arguments') if (
        not args.dataset and _is_run(args.checkpoints[0])) else None
    if not args.dataset and run is None:
        raise UsageError('--dataset is needed when the first model is not a train_kd.py run folder.')
    run = run or {}
    dataset, data_dir = args.dataset or run.get('dataset') or '', args.data_dir or run.get('data_dir')
    config = resolve_data_config(
        dataset, data_dir=data_dir, num_classes=run.get('num_classes'), class_map=run.get('class_map') or None,
        input_size=run.get('input_size'), img_size=args.img_size or run.get('img_size'), in_chans=run.get('in_chans'),
        mean=run.get('mean'), std=run.get('std'), crop_padding=run.get('crop_padding'),
        interpolation=run.get('interpolation'))
    return _Data(dataset, data_dir, bool(args.dataset_download or run.get('dataset_download')),
                 run.get('train_split') or 'train', run.get('val_split') or 'validation', config)


def _split_loader(data: _Data, split: str, classes: List[int], max_per_class: Optional[int], batch_size: int):
    dc = data.config
    tf = create_kd_transform(input_size=dc.size, is_training=False, mean=dc.mean, std=dc.std,
                             crop_padding=dc.crop_padding, interpolation=dc.interpolation)
    try:
        ds = create_kd_dataset(data.dataset, root=data.data_dir, split=split, is_training=False,
                               download=data.download, transform=tf)
    except (ValueError, OSError, RuntimeError) as e:
        raise UsageError(f'Dataset {data.dataset!r}, split {split!r}: {str(e).rstrip(".")}.') from e
    targets = getattr(ds, 'targets', None)
    targets = np.asarray(targets if targets is not None else [y for _, y in ds])
    keep = []
    for c in classes:
        idx = np.flatnonzero(targets == c)
        if len(idx) == 0:
            raise UsageError(f'The {split!r} split of {data.dataset!r} has no images of class {c}.')
        keep += idx[:max_per_class].tolist()
    return torch.utils.data.DataLoader(torch.utils.data.Subset(ds, sorted(keep)), batch_size=batch_size)


def load_model(ref: str, model_name: str, num_classes: int, which: str) -> Tuple[str, torch.nn.Module]:
    """(display name, model with weights) of a run folder, a checkpoint file or a timm hf-hub:/local-dir: name."""
    import timm
    from timm_kd.models import KDCheckpointError, load_kd_checkpoint, read_kd_checkpoint
    if ref.startswith(('hf-hub:', 'local-dir:')):
        try:
            return ref.split(':', 1)[1].rstrip('/').split('/')[-1], timm.create_model(ref, pretrained=True)
        except Exception as e:  # noqa: BLE001 - Hub / folder errors of any kind end in one sentence
            raise UsageError(f'Could not load {ref}: {first_line(e)}.') from e
    name, path = os.path.basename(os.path.normpath(ref)), ref
    if _is_run(ref):
        model_name = model_name or load_flag_file(os.path.join(ref, 'args.yaml'), 'The run arguments').get('model')
        path = os.path.join(ref, RUN_WEIGHTS[which])
    if not os.path.isfile(path):
        raise UsageError(f'{ref!r} is neither a run folder with {RUN_WEIGHTS[which]}, a checkpoint file, '
                         f'nor an hf-hub:/local-dir: model.')
    try:
        state_dict, meta = read_kd_checkpoint(path)
        model_name = model_name or meta.get('arch')
        if not model_name:
            raise UsageError(f'{path} does not name its architecture: pass --model NAME.')
        model = timm.create_model(model_name, num_classes=int(meta.get('num_classes') or num_classes))
        load_kd_checkpoint(model, state_dict)
    except (KDCheckpointError, RuntimeError) as e:
        raise UsageError(f'{path}: {first_line(e)}.') from e
    return name.replace('.pth.tar', '').replace('.pth', ''), model


def format_scores(rows: List[Dict]) -> str:
    lines = ['| model | group | classes | split | samples | homogeneity | completeness | V-score |',
             '|---|---|---|---|---:|---:|---:|---:|']
    lines += [f'| {r["model"]} | {r["group"]} | {" ".join(map(str, r["classes"]))} | {r["split"]} | {r["samples"]} '
              f'| {r["homogeneity"]:.4f} | {r["completeness"]:.4f} | {r["v_score"]:.4f} |' for r in rows]
    return '\n'.join(lines) + '\n'


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m timm_kd.features', description=__doc__.split('\n\n')[0],
                                epilog=__doc__.split('\n\n', 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('checkpoints', nargs='+', metavar='CKPT',
                   help='run folder, checkpoint file (.pth/.pth.tar/.safetensors), hf-hub:ORG/REPO or local-dir:PATH')
    p.add_argument('--dataset', default='', help='train_kd.py dataset name (default: the first run folder\'s)')
    p.add_argument('--data-dir', default='', help='dataset folder')
    p.add_argument('--dataset-download', action='store_true', help='download a torchvision dataset')
    p.add_argument('--img-size', type=int, default=None, help='input size (default: the dataset\'s / the run\'s)')
    p.add_argument('--groups', default='', metavar='NAME=C,C;...', help='class groups scored by V-score, e.g. '
                   '"similar=3,5;different=0,1" (default: one group of --classes)')
    p.add_argument('--classes', default='', metavar='C,C,...',
                   help='classes shown in the 2-D embedding (default: every class of --groups)')
    p.add_argument('--splits', default='train,test', help='splits to analyse: train and/or test (default both)')
    p.add_argument('--max-per-class', type=int, default=None, metavar='N', help='use at most N images per class')
    p.add_argument('--model', default='', help='architecture of checkpoint files that do not name it')
    p.add_argument('--which', choices=tuple(RUN_WEIGHTS), default='last',
                   help='weights of a run folder: last (default, the KD literature\'s number) or best epoch')
    p.add_argument('--embed', choices=('pca', 'tsne', 'none'), default='pca', help='2-D embedding (default pca)')
    p.add_argument('--batch-size', type=int, default=256, help='images per forward pass (default 256)')
    p.add_argument('--seed', type=int, default=0, help='seed of k-means and t-SNE (default 0)')
    p.add_argument('--output', default='', help='output folder (default: output/features/<date-time>)')
    return p


def run(args: argparse.Namespace) -> List[Dict]:
    groups = parse_groups(args.groups)
    shown = sorted({int(c) for c in args.classes.split(',') if c.strip()}) if args.classes else sorted(
        {c for g in groups.values() for c in g})
    if not groups:
        if len(shown) < 2:
            raise UsageError('Give --groups (e.g. "similar=3,5;different=0,1") or at least two --classes.')
        groups = {'classes': shown}
    splits = [s.strip() for s in args.splits.split(',') if s.strip()]
    if not splits or any(s not in ('train', 'test') for s in splits):
        raise UsageError(f'--splits takes train and/or test, got {args.splits!r}.')
    for flag, value in (('--max-per-class', args.max_per_class), ('--batch-size', args.batch_size)):
        if value is not None and value < 1:
            raise UsageError(f'{flag} must be at least 1, got {value}.')
    out = args.output or os.path.join('output', 'features', datetime.now().strftime('%Y%m%d-%H%M%S'))
    if os.path.lexists(out) and not os.path.isdir(out):
        raise UsageError(f'--output {out} is a file, not a folder: pass a folder to write the results into.')
    data = _data(args)
    num_classes = data.config.num_classes
    classes = sorted({c for g in groups.values() for c in g} | set(shown))
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise UsageError(f'Class indices {bad} are outside 0..{num_classes - 1} of {data.dataset!r}.')
    models = [load_model(ref, args.model, num_classes, args.which) for ref in args.checkpoints]
    loaders = {s: _split_loader(data, data.train_split if s == 'train' else data.val_split, classes,
                                args.max_per_class, args.batch_size) for s in splits}
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise output_error(out, e) from None
    rows = []
    for name, model in models:
        points = {}
        for split, loader in loaders.items():
            feats, labels = extract_features(model, loader)
            for group, ids in groups.items():
                rows.append(dict(model=name, group=group, classes=ids, split=split,
                                 **cluster_v_score(feats, labels, ids, seed=args.seed)))
            if args.embed != 'none':
                sel = np.isin(labels, shown)
                points[split] = (embed_2d(feats[sel], args.embed, args.seed), labels[sel])
        if points:
            plot_embeddings(points, f'{name}: penultimate features ({args.embed.upper()})',
                            os.path.join(out, f'embedding_{name}'))
    text = format_scores(rows)
    print(text, end='')
    atomic_write_text(os.path.join(out, 'vscore.md'), text)
    atomic_write_text(os.path.join(out, 'vscore.json'), json.dumps(dict(
        dataset=data.dataset, splits=splits, groups=groups, seed=args.seed, results=rows), indent=2) + '\n')
    print(f'Wrote {out}/vscore.md, vscore.json' + (' and the embeddings' if args.embed != 'none' else ''),
          file=sys.stderr)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UsageError as e:
        print(f'timm_kd.features: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
