"""Model cards say what was really trained: tiny train_kd.py runs on each kind of data set, published to the
loopback Hub (tests/hub_server.py), their cards read back and parsed with huggingface_hub's own card parser.

The CIFAR runs use real torchvision CIFAR files of a few random images (only torchvision's md5 check is
relaxed to "the file exists"); the image folder is a few PNGs per class. ``hfds/`` data sets need the
``datasets`` package and a download, which these tests cannot have: their run folders are built from the
records train_kd.py writes (the same keys as a real run), and the card is checked from those.
"""
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image

from timm_kd.hub import io as hub_io
from timm_kd.hub.cli import publish_main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import HubServer, point_client  # noqa: E402

TOKEN = 'hf_kdcards_SECRET_42'
COVERS = ('--dataset-name', '--dataset-id', 'publish.py --dataset-name', 'publish.py --dataset-id',
          'publish.py --dry-run', 'publish.py run_dir', 'publish.py --repo-id')
TRAIN = ['--model', 'resnet8', '-b', '4', '--workers', '0', '--lr', '0.05', '--warmup-epochs', '0', '--epochs', '1',
         '--log-interval', '50', '--seed', '0']

pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def server():
    with HubServer(lifetime=300) as srv:
        yield srv


@pytest.fixture
def hf(server, tmp_path, monkeypatch):
    point_client(monkeypatch, server.endpoint, tmp_path / 'hf_cache', TOKEN)
    monkeypatch.setattr(hub_io, 'RETRY_WAIT', 0.05)
    server.clear_faults()
    return server


@pytest.fixture
def tiny_cifar(monkeypatch):
    """Write CIFAR-10/100 files in torchvision's format; their md5 check becomes "the file exists"."""
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cifar, 'check_integrity', lambda fpath, md5=None: os.path.isfile(fpath))

    def write(root: Path, classes: int, n_train: int = 10, n_test: int = 6) -> Path:
        rng = np.random.default_rng(classes)
        batch = lambda n, key: {'data': rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),  # noqa: E731
                                key: rng.integers(0, classes, n).tolist()}
        if classes == 10:
            folder, key = root / 'cifar-10-batches-py', 'labels'
            files = {f'data_batch_{i}': batch(n_train // 5, key) for i in range(1, 6)}
            files.update(test_batch=batch(n_test, key), **{'batches.meta': {'label_names': [f'c{i}' for i in range(10)]}})
        else:
            folder, key = root / 'cifar-100-python', 'fine_labels'
            files = {'train': batch(n_train, key), 'test': batch(n_test, key),
                     'meta': {'fine_label_names': [f'c{i}' for i in range(100)]}}
        folder.mkdir(parents=True)
        for name, obj in files.items():
            (folder / name).write_bytes(pickle.dumps(obj))
        return root
    return write


def _image_folder(root: Path, classes: int = 4, per_split=(('train', 3), ('val', 2))) -> Path:
    rng = np.random.default_rng(0)
    for split, n in per_split:
        for c in range(classes):
            (root / split / f'class{c}').mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f'class{c}' / f'{i}.png')
    return root


def _publish(hf, run_dir: Path, repo: str, *extra: str) -> dict:
    """Publish with the console script's main; returns the card, its parsed header and model-index results."""
    assert publish_main([str(run_dir), '--repo-id', repo, *extra]) == 0
    card = hf.files(repo)['README.md'].decode()
    local = Path(run_dir) / 'hub' / repo.split('/')[-1] / 'README.md'
    parsed = ModelCard(card)  # huggingface_hub's parser: raises on a malformed header
    meta = metadata_load(local)
    assert meta == parsed.data.to_dict()
    index = meta.get('model-index')
    results = model_index_to_eval_results(index)[1] if index else []
    return dict(card=card, meta=meta, results=results, records=json.loads((Path(run_dir) / 'results.json').read_text()))


def _metrics(results) -> dict:
    return {r.metric_name: r.metric_value for r in results}


def test_cifar10_and_cifar100_runs_name_their_hub_datasets(hf, tmp_path, train_kd, tiny_cifar):
    data10 = tiny_cifar(tmp_path / 'c10', 10)
    plain = train_kd.main(TRAIN + ['--dataset', 'torch/cifar10', '--data-dir', str(data10),
                                   '--output', str(tmp_path / 'out'), '--experiment', 'c10'])
    got = _publish(hf, plain['run_dir'], 'kduser/resnet8.c10')
    rec = got['records']
    assert (rec['train_images'], rec['eval_images'], rec['val_split']) == (10, 6, 'validation')
    assert got['meta']['datasets'] == ['uoft-cs/cifar10'] and 'knowledge-distillation' not in got['meta']['tags']
    assert {(r.dataset_type, r.dataset_name, r.dataset_split) for r in got['results']} == {
        ('uoft-cs/cifar10', 'CIFAR-10', 'test')}
    assert _metrics(got['results']) == {
        'Top-1 accuracy (best epoch)': round(rec['best_top1'], 4), 'Top-5 accuracy (best epoch)': round(rec['best_top5'], 4),
        'Top-1 accuracy (last epoch)': round(rec['last_top1'], 4), 'Top-5 accuracy (last epoch)': round(rec['last_top5'], 4)}
    card = got['card']
    assert 'trained without a teacher on CIFAR-10 (`uoft-cs/cifar10` on the Hub)' in card and 'CIFAR-100' not in card
    assert '**Dataset:** CIFAR-10 (`uoft-cs/cifar10` on the Hub), 10 classes, 10 training / 6 test-split images' in card
    assert 'Measured on the test split of CIFAR-10 (6 images).' in card

    # CIFAR-100 with a teacher, evaluated on a subset: the Hub dataset is named, no leaderboard claim is made
    data100 = tiny_cifar(tmp_path / 'c100', 100)
    teacher = tmp_path / 'teacher_r8.pth'
    torch.manual_seed(0)
    torch.save(timm.create_model('resnet8', num_classes=100).state_dict(), teacher)
    kd = train_kd.main(TRAIN + ['--dataset', 'torch/cifar100', '--data-dir', str(data100), '--teacher', 'resnet8',
                                '--teacher-checkpoint', str(teacher), '--tl-cutmix', '--val-num-samples', '4',
                                '--output', str(tmp_path / 'out'), '--experiment', 'c100'])
    got = _publish(hf, kd['run_dir'], 'kduser/resnet8.c100')
    assert got['meta']['datasets'] == ['uoft-cs/cifar100'] and 'model-index' not in got['meta']
    assert 'knowledge-distillation' in got['meta']['tags']
    card = got['card']
    assert 'CIFAR-100 (`uoft-cs/cifar100` on the Hub), 100 classes, 10 training / 4 evaluation images' in card
    assert 'with knowledge distillation from a **resnet8** teacher on CIFAR-100' in card
    assert '(weights: `teacher_r8.pth`)' in card
    assert 'Measured on 4 evaluation images of CIFAR-100, a subset of its test split (--val-num-samples).' in card
    assert f"{got['records']['teacher_top1']:.2f}" in card and 'tl_cutmix' in card


def test_image_folder_cards_with_and_without_a_name(hf, tmp_path, train_kd, capsys):
    folder = _image_folder(tmp_path / 'shapes')
    base = TRAIN + ['--dataset', '', '--data-dir', str(folder), '--val-split', 'val', '--output', str(tmp_path / 'out')]
    anon = train_kd.main(base + ['--experiment', 'anon'])
    got = _publish(hf, anon['run_dir'], 'kduser/resnet8.anon')
    assert 'datasets' not in got['meta'] and 'model-index' not in got['meta']
    card = got['card']
    assert '**Dataset:** a custom image-folder data set (4 classes, 12 training / 8 evaluation images)' in card
    assert 'trained without a teacher on a custom image-folder data set,' in card
    for claim in ('CIFAR-10', 'cifar10', 'uoft-cs', 'test split', 'test-split'):
        assert claim not in card, claim

    # named at publish time (no Hub id: named in the text, still no metadata claim); the dry run shows the header
    assert publish_main([anon['run_dir'], '--repo-id', 'kduser/resnet8.named', '--dataset-name', 'Toy shapes',
                         '--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'Card header:' in out and 'model_name: resnet8.named' in out and 'datasets' not in out
    named = (Path(anon['run_dir']) / 'hub' / 'resnet8.named' / 'README.md').read_text()
    assert '**Dataset:** Toy shapes, 4 classes, 12 training / 8 evaluation images' in named

    # named and identified at training time: recorded in results.json, the card names the Hub id and the split
    ident = train_kd.main(base + ['--experiment', 'ident', '--dataset-name', 'Toy shapes',
                                  '--dataset-id', 'kduser/toy-shapes'])
    got = _publish(hf, ident['run_dir'], 'kduser/resnet8.ident')
    assert (got['records']['dataset_name'], got['records']['dataset_id']) == ('Toy shapes', 'kduser/toy-shapes')
    assert got['meta']['datasets'] == ['kduser/toy-shapes']
    assert {(r.dataset_type, r.dataset_name, r.dataset_split) for r in got['results']} == {
        ('kduser/toy-shapes', 'Toy shapes', 'val')}
    assert 'Toy shapes (`kduser/toy-shapes` on the Hub), 4 classes, 12 training / 8 val-split images' in got['card']
    # a publish-time id wins over the recorded one
    got = _publish(hf, ident['run_dir'], 'kduser/resnet8.ident2', '--dataset-id', 'kduser/shapes-v2')
    assert got['meta']['datasets'] == ['kduser/shapes-v2']


def _hfds_run(run: Path, dataset: str, val_split: str) -> None:
    """The records of a train_kd.py run on ``dataset`` (an hfds/ name), as train_kd.py writes them."""
    run.mkdir(parents=True)
    torch.manual_seed(0)
    model = timm.create_model('resnet8', num_classes=37)
    args = {'model': 'resnet8', 'dataset': dataset, 'val_split': val_split, 'train_split': 'train', 'num_classes': 37,
            'input_key': 'image', 'target_key': 'label', 'epochs': 2, 'val_num_samples': None}
    torch.save({'arch': 'resnet8', 'epoch': 1, 'state_dict': model.state_dict()}, run / 'model_best.pth.tar')
    (run / 'args.yaml').write_text(yaml.safe_dump(args))
    results = {'model': 'resnet8', 'teacher': None, 'dataset': dataset, 'dataset_name': None, 'dataset_id': None,
               'val_split': val_split, 'train_images': 3680, 'eval_images': 3669, 'num_classes': 37,
               'best_top1': 41.5, 'best_top5': 77.25, 'best_epoch': 1, 'last_top1': 40.0, 'last_top5': 76.5,
               'last_epoch': 1, 'data_config': {'input_size': [3, 64, 64], 'mean': [0.5] * 3, 'std': [0.25] * 3}}
    (run / 'results.json').write_text(json.dumps(results))


def test_hfds_runs_use_the_hub_dataset_id_or_say_custom(hf, tmp_path):
    _hfds_run(tmp_path / 'pets', 'hfds/kduser/oxford-pets', 'test')
    got = _publish(hf, tmp_path / 'pets', 'kduser/resnet8.pets')
    assert got['meta']['datasets'] == ['kduser/oxford-pets']
    assert {(r.dataset_type, r.dataset_split) for r in got['results']} == {('kduser/oxford-pets', 'test')}
    assert _metrics(got['results'])['Top-1 accuracy (best epoch)'] == 41.5
    assert '**Dataset:** kduser/oxford-pets, 37 classes, 3680 training / 3669 test-split images' in got['card']
    assert 'input 3x64x64' in got['card']

    _hfds_run(tmp_path / 'local', 'hfds/./my_arrow_dump', 'test')  # a local folder read by `datasets`
    got = _publish(hf, tmp_path / 'local', 'kduser/resnet8.local')
    assert 'datasets' not in got['meta'] and 'model-index' not in got['meta']
    assert 'a custom Hugging Face datasets data set (37 classes, 3680 training / 3669 evaluation images)' in got['card']


def test_cards_state_nothing_the_records_do_not_hold(hf, tmp_path):
    """Records of an old run (no counts, no data config, no teacher source): the card leaves those out."""
    _hfds_run(tmp_path / 'old', 'torch/cifar100', 'validation')
    results = json.loads((tmp_path / 'old' / 'results.json').read_text())
    for key in ('train_images', 'eval_images', 'data_config', 'val_split'):
        results.pop(key)
    results.update(num_classes=37, teacher='resnet32x4', teacher_top1=None)
    (tmp_path / 'old' / 'results.json').write_text(json.dumps(results))
    got = _publish(hf, tmp_path / 'old', 'kduser/resnet8.old')
    card = got['card']
    assert '**Dataset:** CIFAR-100 (`uoft-cs/cifar100` on the Hub), 37 classes\n' in card
    assert 'input ' not in card.split('## Model details')[1].split('##')[0]
    assert '(weights not recorded)' in card and 'default pretrained' not in card


@pytest.mark.parametrize('method, phrase', [('crd', 'the **CRD** distillation method (`--distill crd`)'),
                                            ('dkd', 'the **DKD** distillation method (`--distill dkd`)'),
                                            (None, 'knowledge distillation')])
def test_the_card_names_the_distillation_method(tmp_path, method, phrase):
    """Issue 21: the card of a CRD run never named CRD."""
    from hub_runs import fake_run
    from timm_kd.hub import export_student
    run = tmp_path / 'run'
    fake_run(run)
    if method:
        args = dict(yaml.safe_load((run / 'args.yaml').read_text()), distill=method)
        (run / 'args.yaml').write_text(yaml.safe_dump(args))
        results = dict(json.loads((run / 'results.json').read_text()), distill={'method': method, 'beta': 0.8})
        (run / 'results.json').write_text(json.dumps(results))
    card = (export_student(run, 'me/x', out_dir=tmp_path / 'x') / 'README.md').read_text()
    assert f'trained with {phrase} from a **resnet32x4** teacher' in card, card[:1500]
    assert f'- **Distillation method:** `{method or "kd"}`' in card
