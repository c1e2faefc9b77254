"""Checkpoints of the CIFAR KD literature load safely and give the same logits."""
import argparse
import io
import os
import tarfile
import zipfile

import numpy as np
import pytest
import safetensors.torch
import timm
import torch

import timm_kd
from timm_kd import KDCheckpointError, load_kd_checkpoint, read_kd_checkpoint

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _trained(name='resnet8', **kwargs):
    """A model with random non-default weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(1)
    model = timm.create_model(name, **kwargs)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(t.abs() + 0.5 if key.endswith('running_var') else t + 0.1 * torch.randn_like(t))
    return model.eval()


def _logits(model):
    with torch.no_grad():
        return model.eval()(X)


def _optimizer_state(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model(X).sum().backward()
    opt.step()
    return opt.state_dict()


def _legacy_numpy1_pickle(obj, path):
    """torch.save in the pre-1.6 (non-zip) format, with numpy 1.x's module name for numpy scalars, like a
    RepDistiller checkpoint from 2019 (the legacy format is a stream of pickles, so renaming is safe)."""
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    assert b'numpy._core.multiarray\nscalar' in data
    with open(path, 'wb') as f:
        f.write(data.replace(b'numpy._core.multiarray\nscalar', b'numpy.core.multiarray\nscalar'))


@pytest.fixture(scope='module')
def teacher():
    return _trained('resnet8')


def _check_loads(path, ref, name='resnet8'):
    model = timm.create_model(name)
    meta = load_kd_checkpoint(model, path)
    torch.testing.assert_close(_logits(model), _logits(ref), rtol=0, atol=0)
    return meta


def test_repdistiller_numpy_accuracy(tmp_path, teacher):
    sd = teacher.state_dict()
    ckpt = {'epoch': 240, 'model': sd, 'accuracy': np.float64(73.25), 'optimizer': _optimizer_state(_trained())}
    modern, legacy = tmp_path / 'ckpt_epoch_240.pth', tmp_path / 'legacy.pth'
    torch.save(ckpt, modern)
    _legacy_numpy1_pickle(ckpt, legacy)
    for path in (modern, legacy):
        state_dict, meta = read_kd_checkpoint(path)
        assert state_dict.keys() == sd.keys()
        assert meta['epoch'] == 240 and meta['accuracy'] == 73.25 and type(meta['accuracy']) is float
        assert meta['format'] == 'repdistiller' and 'optimizer' not in meta
        assert _check_loads(path, teacher)['accuracy'] == 73.25


def test_repdistiller_tensor_accuracy_loads_with_timm_create_model(tmp_path, teacher):
    # RepDistiller's accuracy is an AverageMeter average: a 0-d tensor; timm's own loader accepts it
    path = tmp_path / 'ckpt_epoch_240.pth'
    torch.save({'epoch': 240, 'model': teacher.state_dict(), 'accuracy': torch.tensor(71.5),
                'optimizer': _optimizer_state(_trained())}, path)
    model = timm.create_model('resnet8', checkpoint_path=str(path))
    torch.testing.assert_close(_logits(model), _logits(teacher), rtol=0, atol=0)
    assert read_kd_checkpoint(path)[1]['accuracy'] == 71.5


def test_mdistiller_student_and_distiller_checkpoints(tmp_path, teacher):
    torch.save({'model': teacher.state_dict()}, tmp_path / 'student_best')
    _check_loads(tmp_path / 'student_best', teacher)
    other = _trained('wrn_16_1')  # a distiller's state dict holds student and teacher (DataParallel)
    model_sd = {f'module.student.{k}': v for k, v in teacher.state_dict().items()}
    model_sd.update({f'module.teacher.{k}': v for k, v in other.state_dict().items()})
    torch.save({'epoch': 240, 'model': model_sd, 'best_acc': 70.0, 'optimizer': {}}, tmp_path / 'latest')
    assert _check_loads(tmp_path / 'latest', teacher)['best_acc'] == 70.0


def test_good_da_module_prefix(tmp_path, teacher):
    sd = {f'module.{k}': v for k, v in teacher.state_dict().items()}
    torch.save({'epoch': 239, 'model': sd, 'accuracy': np.float32(70.5)}, tmp_path / 'resnet8_best.pth')
    assert _check_loads(tmp_path / 'resnet8_best.pth', teacher)['epoch'] == 239


def test_timm_raw_and_safetensors(tmp_path, teacher):
    sd = teacher.state_dict()
    args = argparse.Namespace(model='resnet8', lr=0.05)
    torch.save({'arch': 'resnet8', 'epoch': 3, 'state_dict': sd, 'args': args, 'metric': 71.0},
               tmp_path / 'model_best.pth.tar')
    meta = _check_loads(tmp_path / 'model_best.pth.tar', teacher)
    assert meta['format'] == 'timm' and meta['arch'] == 'resnet8' and meta['args']['lr'] == 0.05
    torch.save(sd, tmp_path / 'raw.pth')
    assert _check_loads(tmp_path / 'raw.pth', teacher)['format'] == 'state_dict'
    safetensors.torch.save_file(sd, tmp_path / 'model.safetensors', metadata={'arch': 'resnet8'})
    assert _check_loads(tmp_path / 'model.safetensors', teacher)['arch'] == 'resnet8'
    model = timm.create_model('resnet8')  # a state dict (or checkpoint dict) in memory
    load_kd_checkpoint(model, {'model': sd})
    torch.testing.assert_close(_logits(model), _logits(teacher), rtol=0, atol=0)


@pytest.mark.parametrize('name', ['wrn_16_2', 'vgg8_cifar'])
def test_other_families(tmp_path, name):
    ref = _trained(name)
    torch.save({'epoch': 240, 'model': ref.state_dict(), 'accuracy': np.float64(75.0)}, tmp_path / 'ckpt.pth')
    _check_loads(tmp_path / 'ckpt.pth', ref, name)


def test_wrong_architecture_names_keys(tmp_path, teacher):
    torch.save({'model': teacher.state_dict(), 'epoch': 1}, tmp_path / 'resnet8.pth')
    with pytest.raises(KDCheckpointError) as info:
        load_kd_checkpoint(timm.create_model('wrn_16_1'), tmp_path / 'resnet8.pth')
    msg = str(info.value)
    assert 'wrn_16_1' in msg and 'missing keys: ' in msg and 'unexpected keys: ' in msg
    assert 'block1.layer.0.conv1.weight' in msg and 'layer1.0.conv1.weight' in msg
    assert 'more)' in msg  # long key lists are truncated
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, ValueError)


def test_class_count_mismatch_names_shapes(tmp_path, teacher):
    torch.save({'model': teacher.state_dict()}, tmp_path / 'ckpt.pth')
    for strict in (True, False):
        with pytest.raises(KDCheckpointError, match=r'fc\.weight \(100, 64\) in checkpoint vs \(10, 64\) in model'):
            load_kd_checkpoint(timm.create_model('resnet8', num_classes=10), tmp_path / 'ckpt.pth', strict=strict)


def test_non_strict_ignores_extra_and_missing_keys(teacher):
    sd = dict(teacher.state_dict(), extra=torch.zeros(1))
    del sd['fc.bias']
    model = timm.create_model('resnet8')
    load_kd_checkpoint(model, sd, strict=False)
    torch.testing.assert_close(model.conv1.weight, teacher.conv1.weight)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f'touch {self.path}',)


def test_pickle_with_code_is_refused(tmp_path, teacher):
    marker = tmp_path / 'pwned'
    torch.save({'model': teacher.state_dict(), 'accuracy': _Evil(marker)}, tmp_path / 'evil.pth')
    with pytest.raises(KDCheckpointError, match='refusing to load .*system'):
        read_kd_checkpoint(tmp_path / 'evil.pth')
    with pytest.raises(KDCheckpointError):
        load_kd_checkpoint(timm.create_model('resnet8'), tmp_path / 'evil.pth')
    assert not marker.exists()


def test_archive_and_missing_file(tmp_path, teacher):
    torch.save({'model': teacher.state_dict()}, tmp_path / 'ckpt_epoch_240.pth')
    with tarfile.open(tmp_path / 'cifar_teachers.tar', 'w') as tf:  # mdistiller's download
        tf.add(tmp_path / 'ckpt_epoch_240.pth', arcname='resnet8_vanilla/ckpt_epoch_240.pth')
    with pytest.raises(KDCheckpointError, match='archive .*extract'):
        read_kd_checkpoint(tmp_path / 'cifar_teachers.tar')
    with pytest.raises(KDCheckpointError, match='not found'):
        read_kd_checkpoint(tmp_path / 'nope.pth')
    assert zipfile.is_zipfile(tmp_path / 'ckpt_epoch_240.pth')  # a modern torch.save file is a zip, not a tar
    assert timm_kd.read_kd_checkpoint is read_kd_checkpoint


def test_bytes_that_are_no_checkpoint_are_one_error_never_a_traceback(tmp_path, teacher):
    """Every one-byte file and a few hundred random ones (some starting like a pickle): whatever torch's readers trip
    over (struct.error, 'Invalid magic number', IndexError, ...) is a KDCheckpointError of one line. A cut zip
    checkpoint too."""
    rng = np.random.default_rng(0)
    blobs = [bytes([b]) for b in range(256)]
    blobs += [bytes(rng.integers(0, 256, int(n), dtype=np.uint8)) for n in rng.choice([2, 3, 8, 64, 512, 4096], 300)]
    blobs += [b'\x80\x02' + blob for blob in blobs[256:400]]
    torch.save({'model': teacher.state_dict()}, tmp_path / 'whole.pth')
    whole = (tmp_path / 'whole.pth').read_bytes()
    blobs += [whole[:len(whole) // 2], whole[:100]]
    path = tmp_path / 'blob.pth'
    for blob in blobs:
        path.write_bytes(blob)
        with pytest.raises(KDCheckpointError) as e:
            read_kd_checkpoint(path)
        assert len(str(e.value).splitlines()) == 1, (blob[:16], str(e.value))
