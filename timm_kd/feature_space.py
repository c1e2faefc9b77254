"""Feature-space analysis of Choi et al. (partial mixup): penultimate features, V-score of k-means clusters,
2-D embeddings. The command line is ``python -m timm_kd.features``.

Choi et al. compare students and teachers trained with and without mixup by how well the penultimate
features of a few classes separate: k-means with one cluster per class, scored by the V-measure
(Rosenberg & Hirschberg, 2007) of the clusters against the true classes, on a group of *similar* classes
(e.g. cat / dog) and a group of *different* ones. Mixup tends to make the clusters of similar classes
merge (lower V-score), which the authors relate to a worse teacher for KD.

V-measure, from the contingency table n_ck (class c, cluster k, N samples)::

    H(C) = -sum_c n_c/N log(n_c/N)             H(C|K) = -sum_ck n_ck/N log(n_ck/n_k)
    homogeneity h = 1 - H(C|K)/H(C)            completeness c = 1 - H(K|C)/H(K)   (1 when H(.) = 0)
    V = (1 + beta) h c / (beta h + c)          (0 when h + c = 0; beta = 1)
"""
import os
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

__all__ = ['v_measure', 'extract_features', 'cluster_v_score', 'embed_2d', 'plot_embeddings']


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
    from .figures import STYLE, _pyplot, _save
    plt = _pyplot()
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
        return _save(fig, os.path.dirname(path_stem), os.path.basename(path_stem))
