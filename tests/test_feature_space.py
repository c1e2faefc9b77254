"""timm_kd.feature_space / python -m timm_kd.features: V-measure against scikit-learn, penultimate features,
the command line on a run folder and a checkpoint file (tiny resnet8, synthetic 16 px images)."""
import json

import numpy as np
import pytest
import timm
import torch
import yaml
from sklearn.cluster import KMeans
from sklearn.metrics import homogeneity_completeness_v_measure, v_measure_score

from timm_kd import features
from timm_kd.feature_space import cluster_v_score, embed_2d, extract_features, v_measure

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def test_v_measure_equals_scikit_learn():
    rng = np.random.RandomState(0)
    cases = [(rng.randint(0, 4, 200), rng.randint(0, 3, 200)), (rng.randint(0, 2, 50), rng.randint(0, 6, 50)),
             ([0, 0, 1, 1], [5, 5, 7, 7]), ([0, 0, 1, 1], [0, 1, 0, 1]), ([3, 3, 3], [0, 1, 2]), ([0, 1, 2], [4, 4, 4]),
             ([1, 1], [2, 2])]
    for true, pred in cases:
        assert v_measure(true, pred) == pytest.approx(homogeneity_completeness_v_measure(true, pred), abs=1e-12)
    # k-means on fixed features: three blobs, two of them overlapping
    centers = np.array([[0.0, 0.0], [0.5, 0.0], [6.0, 6.0]])
    labels = np.repeat([0, 1, 2], 40)
    feats = centers[labels] + rng.normal(scale=0.6, size=(120, 2))
    clusters = KMeans(n_clusters=3, n_init=10, random_state=0).fit_predict(feats)
    assert v_measure(labels, clusters)[2] == pytest.approx(v_measure_score(labels, clusters), abs=1e-12)
    similar, different = cluster_v_score(feats, labels, [0, 1]), cluster_v_score(feats, labels, [0, 2])
    assert different['v_score'] == pytest.approx(1.0) and similar['v_score'] < 0.5 and similar['samples'] == 80
    with pytest.raises(ValueError, match='two 1-d arrays'):
        v_measure([0, 1], [0, 1, 2])
    assert embed_2d(feats, 'pca').shape == embed_2d(feats, 'tsne').shape == (120, 2)


def test_extract_features_are_the_pooled_penultimate_activations():
    model = timm.create_model('resnet8', num_classes=10).eval()
    x, y = torch.randn(6, 3, 16, 16), torch.arange(6)
    feats, labels = extract_features(model, [(x[:4], y[:4]), (x[4:], y[4:])])
    with torch.no_grad():
        ref = model.forward_features(x).mean((2, 3))  # CIFAR ResNet: global average pool, then fc
        assert torch.allclose(model.fc(ref), model(x), atol=1e-5)
    assert feats.shape == (6, 64) and np.allclose(feats, ref.numpy(), atol=1e-5) and labels.tolist() == y.tolist()


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    model = timm.create_model('resnet8', num_classes=10)
    torch.save({'arch': 'resnet8', 'num_classes': 10, 'state_dict': model.state_dict()}, path)
    return model


def test_cli_on_a_run_folder_and_a_checkpoint_file(tmp_path, capsys):
    run = tmp_path / 'run_a'
    run.mkdir()
    (run / 'args.yaml').write_text(yaml.safe_dump(dict(model='resnet8', dataset='synthetic/10x16')))
    model_a = _checkpoint(run / 'last.pth.tar', 0)
    _checkpoint(tmp_path / 'b.pth.tar', 1)
    out = tmp_path / 'out'
    assert features.main([str(run), str(tmp_path / 'b.pth.tar'), '--groups', 'similar=0,1;different=2,3,4',
                          '--max-per-class', '12', '--output', str(out)]) == 0
    data = json.loads((out / 'vscore.json').read_text())
    assert data['dataset'] == 'synthetic/10x16'  # taken from the run folder's args.yaml
    rows = data['results']
    assert [(r['model'], r['group'], r['split']) for r in rows][:3] == [
        ('run_a', 'similar', 'train'), ('run_a', 'different', 'train'), ('run_a', 'similar', 'test')]
    assert len(rows) == 8 and all(r['samples'] == 12 * len(r['classes']) for r in rows)
    assert '| run_a | different | 2 3 4 | test | 36 |' in capsys.readouterr().out

    # independent check of one number: the same images through the same weights, scikit-learn's V-measure
    from timm_kd.data import create_kd_dataset
    from timm_kd.data.transforms import create_kd_transform
    tf = create_kd_transform(16, is_training=False, mean=(0.5,) * 3, std=(0.25,) * 3, crop_padding=2)
    ds = create_kd_dataset('synthetic/10x16', split='validation', transform=tf)
    idx = [i for c in (2, 3, 4) for i in np.flatnonzero(np.asarray(ds.targets) == c)[:12]]
    x = torch.stack([ds[i][0] for i in sorted(idx)])
    y = np.asarray([ds.targets[i] for i in sorted(idx)])
    with torch.no_grad():
        f = model_a.eval().forward_head(model_a.forward_features(x), pre_logits=True).numpy()
    ref = v_measure_score(y, KMeans(n_clusters=3, n_init=10, random_state=0).fit_predict(f))
    assert rows[3]['v_score'] == pytest.approx(ref, abs=1e-6)
    for name in ('run_a', 'b'):
        assert (out / f'embedding_{name}.png').read_bytes()[:4] == b'\x89PNG'
        assert (out / f'embedding_{name}.svg').exists()


def test_cli_mistakes_exit_2_with_one_sentence(tmp_path, capsys):
    _checkpoint(tmp_path / 'a.pth.tar', 0)
    ckpt = str(tmp_path / 'a.pth.tar')
    for argv in ([ckpt, '--dataset', 'synthetic/10x16', '--groups', 'x=1'],
                 [ckpt, '--dataset', 'synthetic/10x16', '--groups', 'x=1,12'],
                 [str(tmp_path / 'missing'), '--dataset', 'synthetic/10x16', '--classes', '0,1'],
                 [ckpt, '--groups', 'x=0,1'],
                 [ckpt, '--dataset', 'synthetic/10x16', '--classes', '0,1', '--splits', 'val'],
                 [ckpt, '--dataset', 'synthetic/10x16', '--classes', '0,1', '--img-size', 'x']):
        with pytest.raises(SystemExit) if '--img-size' in argv else _nothing():
            assert features.main(argv + ['--output', str(tmp_path / 'o')]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith('timm_kd.features: error: ')]
    assert len(err) == 5
    assert not (tmp_path / 'o').exists()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_output_that_is_a_file_and_max_per_class_0_are_one_sentence(tmp_path, capsys):
    """Issue 21: both were tracebacks."""
    _checkpoint(tmp_path / 'a.pth.tar', 0)
    a_file = tmp_path / 'results'
    a_file.write_text('my notes')
    base = [str(tmp_path / 'a.pth.tar'), '--dataset', 'synthetic/10x16', '--classes', '0,1']
    for argv, phrase in ((base + ['--output', str(a_file)], f'--output {a_file} is a file, not a folder'),
                         (base + ['--max-per-class', '0', '--output', str(tmp_path / 'o')],
                          '--max-per-class must be at least 1, got 0'),
                         (base + ['--batch-size', '0', '--output', str(tmp_path / 'o')],
                          '--batch-size must be at least 1, got 0')):
        assert features.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == f'timm_kd.features: error: {err.split("error: ", 1)[1]}' and phrase in err and '\n' not in err
    assert a_file.read_text() == 'my notes' and not (tmp_path / 'o').exists()


@pytest.mark.parametrize('args_yaml', ['link', 'list'])
def test_a_run_folder_whose_args_yaml_is_a_link_or_no_mapping_is_one_sentence(tmp_path, capsys, args_yaml):
    """The model name of a run folder comes from its args.yaml, read as train_kd reads it: never through a link,
    a mapping or one sentence (a list was an AttributeError)."""
    run = tmp_path / 'run'
    run.mkdir()
    _checkpoint(run / 'model_best.pth.tar', 0)
    if args_yaml == 'link':
        (tmp_path / 'elsewhere.yaml').write_text('model: resnet8\n')
        (run / 'args.yaml').symlink_to(tmp_path / 'elsewhere.yaml')
    else:
        (run / 'args.yaml').write_text('- model\n- resnet8\n')
    argv = [str(run), '--dataset', 'synthetic/10x16', '--classes', '0,1', '--output', str(tmp_path / 'o')]
    assert features.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('timm_kd.features: error: The run arguments') and '\n' not in err, err
    assert not (tmp_path / 'o').exists()
