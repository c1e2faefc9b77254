"""Transforms and datasets of the KD recipes (timm_kd/data/transforms.py, timm_kd/data/datasets.py)."""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from timm_kd.data.datasets import (
    CIFAR10_MEAN, CIFAR10_STD, DIGITS_MEAN, DIGITS_STD, DatasetNotFoundError, DigitsDataset, SyntheticDataset,
    TinyImageNetFolder, create_kd_dataset, dataset_defaults)
from timm_kd.data.transforms import EnsureSize, create_kd_transform
from timm_kd.models._builder import CIFAR100_MEAN, CIFAR100_STD

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _img(size=32, seed=0, mode='RGB'):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).convert(mode)


def _types(tf):
    return [type(t) for t in tf.transforms]


def test_cifar_train_transform_is_the_crd_recipe():
    tf = create_kd_transform(32, True, MEAN, STD)
    assert _types(tf) == [EnsureSize, T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    crop = tf.transforms[1]
    assert crop.size == (32, 32) and crop.padding == 4 and crop.fill == 0 and crop.padding_mode == 'constant'
    assert tf.transforms[2].p == 0.5
    assert tf(_img()).shape == (3, 32, 32)


def test_train_transform_crops_with_zero_padding():
    # a white image: any crop offset other than (4, 4) brings zero-padded (black) pixels in
    white = Image.new('RGB', (32, 32), (255, 255, 255))
    tf = create_kd_transform(32, True, (0., 0., 0.), (1., 1., 1.), std_aug='crop')
    torch.manual_seed(0)
    outs = [tf(white) for _ in range(20)]
    assert any((o == 0).any() for o in outs)
    assert all(o.min() >= 0 and o.max() <= 1 for o in outs)


def test_eval_transform_is_to_tensor_and_normalize():
    img = _img(seed=1)
    out = create_kd_transform(32, False, MEAN, STD)(img)
    ref = (torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255 - torch.tensor(MEAN)[:, None, None]) \
        / torch.tensor(STD)[:, None, None]
    torch.testing.assert_close(out, ref)
    assert _types(create_kd_transform(32, False, MEAN, STD, normalize=False)) == [EnsureSize, T.ToTensor]


@pytest.mark.parametrize('std_aug,expected', [
    ('none', []), ('flip', [T.RandomHorizontalFlip]), ('crop', [T.RandomCrop]),
    ('crop_flip', [T.RandomCrop, T.RandomHorizontalFlip])])
def test_std_aug_modes(std_aug, expected):
    tf = create_kd_transform(32, True, MEAN, STD, std_aug=std_aug)
    assert _types(tf)[1:-2] == expected
    # eval never augments
    assert _types(create_kd_transform(32, False, MEAN, STD, std_aug=std_aug)) == [EnsureSize, T.ToTensor, T.Normalize]


def test_std_aug_none_is_deterministic_and_bad_values_raise():
    img = _img(seed=2)
    tf = create_kd_transform(32, True, MEAN, STD, std_aug='none')
    torch.testing.assert_close(tf(img), create_kd_transform(32, False, MEAN, STD)(img))
    with pytest.raises(ValueError, match='std_aug'):
        create_kd_transform(32, True, MEAN, STD, std_aug='cutmix')
    with pytest.raises(TypeError, match='auto_augment'):
        create_kd_transform(32, True, MEAN, STD, auto_augment='rand-m9')
    with pytest.raises(ValueError, match='square'):
        create_kd_transform((3, 32, 48), True, MEAN, STD)


def test_tiny_imagenet_recipe_pads_8_at_64px():
    d = dataset_defaults('tinyimagenet')
    assert d == dict(num_classes=200, input_size=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                     crop_padding=8)
    tf = create_kd_transform((3, 64, 64), True, d['mean'], d['std'], crop_padding=d['crop_padding'])
    assert tf.transforms[1].padding == 8 and tf.transforms[1].size == (64, 64)
    assert tf(_img(64)).shape == (3, 64, 64)


def test_imagenet_size_falls_back_to_timm():
    tf = create_kd_transform(224, True, MEAN, STD, crop_pct=0.9)
    names = [type(t).__name__ for t in tf.transforms]
    assert names[0] == 'RandomResizedCropAndInterpolation' and 'RandomCrop' not in names
    assert tf(_img(256)).shape == (3, 224, 224)
    # timm's train default interpolation 'random' reaches timm (random choice per image)
    rrc = create_kd_transform(224, True, MEAN, STD, interpolation='random').transforms[0]
    assert len(rrc.interpolation) == 2
    assert create_kd_transform(32, True, MEAN, STD, interpolation='random').transforms[0].interpolation == 'bilinear'
    assert create_kd_transform(224, False, MEAN, STD)(_img(300)).shape == (3, 224, 224)


def test_ensure_size_only_resizes_other_sizes():
    img = _img(32)
    assert EnsureSize(32)(img) is img
    assert EnsureSize(32)(_img(40)).size == (32, 32)
    assert create_kd_transform(32, True, MEAN, STD)(_img(48)).shape == (3, 32, 32)


def test_dataset_defaults_of_known_datasets():
    c100 = dataset_defaults('torch/cifar100')
    assert c100 == dict(num_classes=100, input_size=32, mean=(0.5071, 0.4867, 0.4408),
                        std=(0.2675, 0.2565, 0.2761), crop_padding=4)
    assert c100['mean'] == CIFAR100_MEAN and c100['std'] == CIFAR100_STD
    c10 = dataset_defaults('torch/cifar10')
    assert (c10['num_classes'], c10['mean'], c10['std']) == (10, CIFAR10_MEAN, CIFAR10_STD)
    assert dataset_defaults('hfds/uoft-cs/cifar100')['num_classes'] == 100
    assert dataset_defaults('hfds/uoft-cs/cifar10')['num_classes'] == 10
    dg = dataset_defaults('sklearn/digits')
    assert dg == dict(num_classes=10, input_size=32, mean=DIGITS_MEAN, std=DIGITS_STD, crop_padding=4)
    sy = dataset_defaults('synthetic/7x16')
    assert (sy['num_classes'], sy['input_size'], sy['crop_padding']) == (7, 16, 2)
    assert dataset_defaults('hfds/someone/imagenet-1k')['input_size'] == 224
    with pytest.raises(ValueError):
        dataset_defaults('synthetic/ten')


def _write_folder(root, splits=('train', 'val'), classes=('a', 'b', 'c'), size=64, per_class=2):
    for sp in splits:
        for ci, c in enumerate(classes):
            os.makedirs(os.path.join(root, sp, c), exist_ok=True)
            for i in range(per_class):
                _img(size, seed=ci * 10 + i).save(os.path.join(root, sp, c, f'{i}.png'))


def test_image_folder_defaults_and_dataset(tmp_path):
    root = str(tmp_path / 'myset')
    _write_folder(root, size=64)
    d = dataset_defaults('', root)
    assert (d['num_classes'], d['input_size'], d['crop_padding']) == (3, 64, 8)
    tf = create_kd_transform(64, False, d['mean'], d['std'])
    ds = create_kd_dataset('', root, split='validation', transform=tf)
    assert len(ds) == 6 and ds.transform is tf
    x, y = ds[5]
    assert x.shape == (3, 64, 64) and y == 2


def test_missing_datasets_raise_one_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match='--data-dir'):
        create_kd_dataset('torch/cifar100', None, 'train')
    with pytest.raises(DatasetNotFoundError, match=r'cifar-100-python.*--dataset-download.*--data-dir'):
        create_kd_dataset('torch/cifar100', str(tmp_path), 'train')
    with pytest.raises(DatasetNotFoundError, match='cifar-10-batches-py'):
        create_kd_dataset('torch/cifar10', str(tmp_path), 'validation')
    with pytest.raises(DatasetNotFoundError, match='--data-dir'):
        create_kd_dataset('', str(tmp_path / 'nope'), 'train')
    # a folder with train/ but no val/: timm would silently evaluate on the train images
    root = str(tmp_path / 'trainonly')
    _write_folder(root, splits=('train',), size=32, per_class=1)
    with pytest.raises(DatasetNotFoundError, match='validation'):
        create_kd_dataset('', root, 'validation')
    assert issubclass(DatasetNotFoundError, FileNotFoundError)


def test_raw_tiny_imagenet_layout_is_labelled_by_wnid(tmp_path):
    root = tmp_path / 'tiny-imagenet-200'
    wnids = ['n02', 'n01']
    (root / 'val' / 'images').mkdir(parents=True)
    (root / 'wnids.txt').write_text('\n'.join(wnids) + '\n')
    ann = []
    for w in wnids:
        (root / 'train' / w / 'images').mkdir(parents=True)
        for i in range(2):
            _img(64, seed=i).save(root / 'train' / w / 'images' / f'{w}_{i}.JPEG', format='JPEG')
        _img(64).save(root / 'val' / 'images' / f'val_{w}.JPEG', format='JPEG')
        ann.append(f'val_{w}.JPEG\t{w}\t0\t0\t63\t63')
    (root / 'val' / 'val_annotations.txt').write_text('\n'.join(ann) + '\n')
    d = dataset_defaults('', str(root))
    assert (d['num_classes'], d['input_size'], d['crop_padding']) == (2, 64, 8)
    tf = create_kd_transform(64, True, d['mean'], d['std'], crop_padding=8)
    train = create_kd_dataset('', str(root), 'train', transform=tf)
    val = create_kd_dataset('tinyimagenet', str(root), 'validation')
    assert isinstance(train, TinyImageNetFolder) and train.classes == ['n01', 'n02']
    assert sorted(train.targets) == [0, 0, 1, 1] and train[0][0].shape == (3, 64, 64)
    assert {os.path.basename(p): t for p, t in val.samples} == {'val_n02.JPEG': 1, 'val_n01.JPEG': 0}
    with pytest.raises(ValueError, match='no labels'):
        TinyImageNetFolder(str(root), 'test')


def test_digits_split_is_deterministic_stratified_and_disjoint():
    tr, va = DigitsDataset('train'), create_kd_dataset('sklearn/digits', split='validation')
    assert (len(tr), len(va)) == (1201, 596)
    assert np.bincount(tr.targets).min() >= 116 and np.bincount(va.targets).min() >= 58
    assert tr.images.shape == (1201, 32, 32, 3) and tr.images.dtype == np.uint8
    # same split every time, no image in both
    assert np.array_equal(DigitsDataset('train').images, tr.images)
    flat_tr = {im.tobytes() for im in tr.images}
    assert not any(im.tobytes() in flat_tr for im in va.images)
    img, y = va[0]
    assert isinstance(img, Image.Image) and img.size == (32, 32) and img.mode == 'RGB' and isinstance(y, int)
    # documented statistics are those of the train split
    x = tr.images.astype(np.float64) / 255
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), DIGITS_MEAN, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2)), DIGITS_STD, atol=1e-4)


def test_digits_with_transform_gives_normalized_tensors():
    d = dataset_defaults('sklearn/digits')
    ds = create_kd_dataset('sklearn/digits', split='train', is_training=True,
                           transform=create_kd_transform(d['input_size'], True, d['mean'], d['std']))
    loader = torch.utils.data.DataLoader(ds, batch_size=256, shuffle=False)
    x, y = next(iter(loader))
    assert x.shape == (256, 3, 32, 32) and y.dtype == torch.int64
    assert abs(x.mean().item()) < 0.3 and 0.6 < x.std().item() < 1.4


def test_synthetic_is_deterministic_and_class_structured():
    tr = create_kd_dataset('synthetic/10x32', split='train')
    va = create_kd_dataset('synthetic/10x32', split='validation', seed=123)  # the run seed does not change data
    assert (len(tr), len(va)) == (10 * 64, 10 * 16) and tr.images.shape[1:] == (32, 32, 3)
    assert np.array_equal(SyntheticDataset(10, 32, 'validation').images, va.images)
    assert not np.array_equal(tr.images[:len(va)], va.images)
    assert len(create_kd_dataset('synthetic/5x16', split='train', num_samples=12)) == 12
    # a nearest-class-mean classifier fit on train beats chance (10 %) by far on val: the classes are learnable
    xt = tr.images.reshape(len(tr), -1).astype(np.float32)
    xv = va.images.reshape(len(va), -1).astype(np.float32)
    yt, yv = np.array(tr.targets), np.array(va.targets)
    means = np.stack([xt[yt == c].mean(0) for c in range(10)])
    pred = ((xv[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == yv).mean() > 0.35


def test_digits_match_sklearn_and_take_a_size():
    from sklearn.datasets import load_digits

    from timm_kd.data.datasets import _load_digits
    images, targets = _load_digits()  # read from sklearn's shipped CSV without importing sklearn
    ref = load_digits()
    assert np.array_equal(images, ref.images) and np.array_equal(targets, ref.target)
    small = create_kd_dataset('sklearn/digits', split='validation', input_size=16)
    assert small.images.shape == (596, 16, 16, 3) and small[0][0].size == (16, 16)
    assert small.targets == DigitsDataset('validation').targets
    # without input_size the images come at the transform's size (no resize per sample)
    tf = create_kd_transform(16, False, DIGITS_MEAN, DIGITS_STD)
    assert create_kd_dataset('sklearn/digits', split='validation', transform=tf).images.shape[1:] == (16, 16, 3)
