"""The ImageNet recipe end to end: 224 px images in ImageNet's folder layout, RandomResizedCrop, 1000 classes, and the
teacher timm itself downloads for ``resnet34.tv_in1k`` (its pretrained_cfg's hf_hub_id, timm/resnet34.tv_in1k) from a
local Hub-compatible server (tests/hub_server.py) serving a timm-format folder this module writes: config.json +
model.safetensors of a randomly initialised ResNet-34, since no real weights can be downloaded here.

The recipe (configs/imagenet/resnet34__resnet18.yaml) is shortened to one epoch of three steps of batch 2, and
resumed from its mid-epoch checkpoint to the same weights as without the stop: in one process with the recipe's own
models (ResNet-34 teacher, ResNet-18 student), and in two processes (``accelerate launch``) with timm's small
``test_resnet`` standing in for both (its registered ``test_resnet.r160_in1k`` weights come from the same Hub the same
way), which keeps the test's CPU time small. The folder holds three of ImageNet's 1000 classes; a class map gives
them their ImageNet indices (tench 0, tabby 281, toilet tissue 999), so the 1000-way models train on them as on the
full set.
"""
import csv
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import HubServer, point_client  # noqa: E402
from hub_runs import TOKEN  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / 'configs' / 'imagenet' / 'resnet34__resnet18.yaml'
TEACHER = 'resnet34.tv_in1k'
SMALL_TEACHER = 'test_resnet.r160_in1k'  # the stand-in of the two-process runs
CLASSES = {'n01440764': 0, 'n02123045': 281, 'n15075141': 999}  # ImageNet's index of each wnid
COVERS = ('--class-map',)
pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _write_images(folder: Path, per_class: int, seed: int) -> None:
    """JPEGs of ImageNet's shapes (not square, larger than the crop), a colour per class plus noise."""
    rng = np.random.default_rng(seed)
    for c, wnid in enumerate(CLASSES):
        (folder / wnid).mkdir(parents=True)
        for i in range(per_class):
            h, w = int(rng.integers(224, 300)), int(rng.integers(240, 340))
            pixels = rng.integers(0, 80, (h, w, 3)) + np.array([60 * c, 120, 200 - 60 * c])
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / wnid / f'{wnid}_{i}.JPEG', quality=90)


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
    """An ImageNet-format folder: train/<wnid>/*.JPEG (4 a class), val/<wnid>/*.JPEG (1 a class), and the class map
    (a .pkl of wnid -> ImageNet index, as timm reads --class-map)."""
    root = tmp_path_factory.mktemp('ilsvrc')
    _write_images(root / 'train', 4, seed=0)
    _write_images(root / 'val', 1, seed=1)
    with open(root / 'classes.pkl', 'wb') as f:
        pickle.dump(CLASSES, f)
    return root


def _served(name: str, tmp_path_factory, seed: int):
    """The files of a timm model folder (config.json + model.safetensors, as timm writes them) of a random ``name``."""
    torch.manual_seed(seed)
    model = timm.create_model(name.split('.')[0], num_classes=1000)
    folder = tmp_path_factory.mktemp(name)
    timm.models.save_for_hf(model, str(folder), safe_serialization=True)
    return {p.name: p.read_bytes() for p in folder.iterdir()}, model.state_dict()


@pytest.fixture(scope='module')
def hub(tmp_path_factory):
    """The local Hub serving the pretrained weights of the two teachers where their pretrained_cfg points timm."""
    with HubServer(lifetime=900) as srv:
        srv.served = {}
        for seed, name in enumerate((TEACHER, SMALL_TEACHER)):
            files, srv.served[name] = _served(name, tmp_path_factory, seed)
            srv.add_repo(timm.models.get_pretrained_cfg(name).hf_hub_id, files)
        yield srv


def _downloaded(hub, name):
    return ('GET', f'/{timm.models.get_pretrained_cfg(name).hf_hub_id}/resolve/main/model.safetensors') in {
        (method, path) for method, path, _ in hub.log}


def _argv(imagenet, out, *extra):
    return ['--config', str(RECIPE), '--data-dir', str(imagenet), '--class-map', str(imagenet / 'classes.pkl'),
            '--batch-size', '2', '--epochs', '1', '--workers', '0', '--log-interval', '1', '--checkpoint-every', '1',
            '--output', str(out), *extra]


def _state(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def _rows(run):
    with open(run / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


def _same_weights(a, b):
    sa, sb = _state(a)['state_dict'], _state(b)['state_dict']
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _resume_copy(run: Path, dest: Path) -> Path:
    """The run's mid-epoch recovery checkpoint, copied out (the resumed run writes a folder of its own)."""
    dest.mkdir()
    shutil.copy(run / 'recovery.pth.tar', dest / 'recovery.pth.tar')
    return dest / 'recovery.pth.tar'


def test_imagenet_recipe_with_the_hub_teacher_trains_and_resumes_exactly(imagenet, hub, tmp_path, monkeypatch, train_kd):
    point_client(monkeypatch, hub.endpoint, tmp_path / 'hf_cache', TOKEN)
    argv = _argv(imagenet, tmp_path, '--train-num-samples', '6')
    res = train_kd.main(argv + ['--experiment', 'ref'])
    run = tmp_path / 'ref'
    assert res['finished'] and res['num_classes'] == 1000 and res['teacher'] == TEACHER
    # timm downloaded the teacher's weights from the Hub (its pretrained_cfg's hf_hub_id): the served ones
    assert _downloaded(hub, TEACHER) and res['teacher_source'] == f'hf-hub:timm/{TEACHER}'
    served = timm.create_model(TEACHER, pretrained=True)  # from the cache the run filled
    assert all(torch.equal(v, hub.served[TEACHER][k]) for k, v in served.state_dict().items())
    # the recipe: 224 px RandomResizedCrop without colour jitter, lr 0.1 x 2 / 256, KD+TLCutMix+pick
    recipe = res['recipe']
    assert recipe['input_size'] == [3, 224, 224] and recipe['lr'] == pytest.approx(0.1 * 2 / 256)
    assert (recipe['pick'], recipe['tl_cutmix'], recipe['decay_milestones']) == ('kld', 1.0, [30, 60, 90])
    rows = _rows(run)
    assert [r['epoch'] for r in rows] == ['0'] and float(rows[-1]['train_picked_share']) == 0.5
    rec = _state(run / 'recovery.pth.tar')
    assert rec['next_epoch'] == 0 and rec['next_step'] == 2  # 6 images, 3 steps an epoch: the last mid-epoch one
    resumed = train_kd.main(argv + ['--resume', str(_resume_copy(run, tmp_path / 'src')), '--experiment', 'resumed'])
    assert resumed['finished'] and _same_weights(run / 'last.pth.tar', tmp_path / 'resumed' / 'last.pth.tar')
    assert _rows(tmp_path / 'resumed')[-1] == rows[-1]


def test_imagenet_recipe_in_two_processes_downloads_the_teacher_and_resumes_exactly(imagenet, hub, tmp_path):
    """``accelerate launch`` with 2 processes of batch 2 (global 4: the recipe's batch 256 split the documented way),
    each process creating its teacher through timm's Hub download into a fresh cache; resumed in 2 processes from the
    mid-epoch checkpoint."""
    launch = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
              '--num_machines', '1', '--main_process_port', '0', '--mixed_precision', 'no', '--dynamo_backend', 'no',
              str(ROOT / 'train_kd.py')]
    argv = _argv(imagenet, tmp_path, '--teacher', SMALL_TEACHER, '--model', 'test_resnet')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', HF_ENDPOINT=hub.endpoint,
               HF_HUB_CACHE=str(tmp_path / 'hf_cache'), HF_HUB_OFFLINE='0', HF_HUB_DISABLE_XET='1', HF_TOKEN=TOKEN)
    r = subprocess.run(launch + argv + ['--experiment', 'a'], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / 'a'
    res = json.loads((run / 'results.json').read_text())
    assert res['finished'] and res['world_size'] == 2 and res['ranks_in_sync'] and res['num_classes'] == 1000
    assert res['recipe']['global_batch_size'] == 4 and res['recipe']['lr'] == pytest.approx(0.1 * 4 / 256)
    assert _downloaded(hub, SMALL_TEACHER) and res['teacher_source'] == f'hf-hub:timm/{SMALL_TEACHER}'
    rec = _state(run / 'recovery.pth.tar')
    assert (rec['next_epoch'], rec['next_step'], rec['world_size']) == (0, 2, 2)  # 12 images, 3 steps a process
    r = subprocess.run(launch + argv + ['--resume', str(_resume_copy(run, tmp_path / 'src')), '--experiment', 'b'],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _same_weights(run / 'last.pth.tar', tmp_path / 'b' / 'last.pth.tar')
    assert _rows(tmp_path / 'b')[-1] == _rows(run)[-1]
