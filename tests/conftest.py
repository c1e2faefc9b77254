import importlib.util
import os
from pathlib import Path

import pytest
import timm
import torch

import timm_kd  # noqa: F401  (registers our models before tests collect them)

# 2 cores: use both unless the caller pinned threads (parallel runs oversubscribe badly otherwise).
torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS') or min(2, os.cpu_count() or 1)))


@pytest.fixture(scope='module')
def one_torch_thread():
    """One intra-op thread, as in the tests' subprocesses (OMP_NUM_THREADS=1): tiny tensors run fastest on
    one thread, two threads thrash when the 2 cores are shared, and equal thread counts keep float sums
    identical between in-process and subprocess runs (exact-resume tests)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def train_kd():
    """The train_kd.py script as a module (its ``main(argv)`` runs in-process)."""
    spec = importlib.util.spec_from_file_location('train_kd', Path(__file__).resolve().parents[1] / 'train_kd.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _random_resnet8(tmp_path_factory, seed: int, name: str) -> str:
    """A 10-class resnet8 initialised from ``seed``, saved as a plain state dict; its path."""
    torch.manual_seed(seed)
    path = tmp_path_factory.mktemp(name) / f'resnet8_{name}.pth'
    torch.save(timm.create_model('resnet8', num_classes=10).state_dict(), path)
    return str(path)


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    """A fixed, randomly initialised 10-class resnet8 teacher saved as a plain state dict."""
    return _random_resnet8(tmp_path_factory, 0, 'teacher')


@pytest.fixture(scope='module')
def init_ckpt(tmp_path_factory):
    """Known starting weights for the student (--initial-checkpoint): the first update can be checked."""
    return _random_resnet8(tmp_path_factory, 1, 'init')


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nothing can be written into: a read-only tmpfs (as root), else mode 0555; skipped when neither
    holds (root without mount rights ignores the mode)."""
    import subprocess
    folder = tmp_path / 'read_only'
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', str(folder)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip('root without mount rights: no way to make a read-only folder here')
        folder.chmod(0o555)
    yield folder
    if mounted:
        subprocess.run(['umount', '-l', str(folder)], check=False)
    else:
        folder.chmod(0o755)
