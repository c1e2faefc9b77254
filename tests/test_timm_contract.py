"""timm's own model tests (``tests/test_models.py`` of the installed timm release) on timm_kd's models.

The wheel ships no tests, so the matching sdist is downloaded once from PyPI into ``<repo>/.timm_tests/``
(gitignored; ``TIMM_KD_TIMM_TESTS`` moves it) and reused. A conftest there imports timm_kd (timm's
tests parametrize over ``list_models()`` at import), makes timm list only the selected models and
deselects the tests that need the network (pretrained download, hub inference tensors). Our modules
are added to ``FEAT_INTER_FILTERS`` so the ``forward_intermediates`` / pruning tests cover them too.

By default every test of timm's file that needs no network runs on every timm_kd model, the slow
prune contract included (about 1 minute on 2 idle cores). ``TIMM_KD_TIMM_TESTS_ALL=0`` runs timm's
CI test set (every test but the prune contract) on one model per distinct architecture code path
(see ``_representatives``) for a quicker local loop.
"""
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import pytest
import timm
from timm.models import model_entrypoint

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get('TIMM_KD_TIMM_TESTS', REPO / '.timm_tests')) / f'timm-{timm.__version__}'

# tests every model must have passed (FX/TorchScript/features/intermediates: the API users rely on)
REQUIRED = (
    'test_model_forward', 'test_model_backward', 'test_model_default_cfgs', 'test_model_forward_torchscript',
    'test_model_forward_features', 'test_model_forward_intermediates_features', 'test_model_forward_intermediates',
    'test_model_forward_fx', 'test_model_backward_fx',
)
# timm's slowest test, unmarked and excluded from timm's own CI: skipped with TIMM_KD_TIMM_TESTS_ALL=0
# (tests/test_models.py checks our prune_intermediate_layers directly)
SLOW = 'test_prune_intermediate_layers_contract'

CONFTEST_PLUGIN = '''

# ---- added by timm_kd's tests/test_timm_contract.py ----
import os  # noqa: E402

import timm  # noqa: E402
import timm_kd  # noqa: E402,F401  registers our models before test_models.py parametrizes over them

torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS') or 1))  # one process per core
_MODELS = set(os.environ['TIMM_KD_MODELS'].split(','))
_NETWORK_TESTS = ('test_model_inference', 'test_model_load_pretrained', 'test_model_features_pretrained')


def _ours(names):
    return [n for n in names if n.split('.')[0] in _MODELS]


# test_models.py parametrizes over timm.list_models() / list_pretrained() at import: listing only our
# models keeps collection fast (timm has ~1700 models x 20 tests)
_list_models, _list_pretrained = timm.list_models, timm.list_pretrained
timm.list_models = lambda *args, **kwargs: _ours(_list_models(*args, **kwargs))
timm.list_pretrained = lambda *args, **kwargs: _ours(_list_pretrained(*args, **kwargs))


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        name = getattr(item, 'callspec', None) and item.callspec.params.get('model_name')
        ours = isinstance(name, str) and name.split('.')[0] in _MODELS and item.originalname not in _NETWORK_TESTS
        (keep if ours else drop).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)
'''


def _our_models():
    return [n for n in timm.list_models() if model_entrypoint(n).__module__.startswith('timm_kd.')]


def _representatives(models):
    """The smallest model of each distinct set of module types (class, blocks, layers).

    Models of one family that differ only in depth / width run the same code, so timm's tests on one
    of them cover all; a family with two block types (e.g. basic / bottleneck) gets one model per type.
    """
    best = {}
    for name in models:
        model = timm.create_model(name, device='meta')
        key = frozenset(type(m) for m in model.modules())
        size = sum(p.numel() for p in model.parameters())
        if key not in best or size < best[key][0]:
            best[key] = (size, name)
    return sorted(name for _, name in best.values())


def _fetch_timm_tests() -> Path:
    """The sdist's tests/test_models.py + conftest.py and pyproject.toml (its pytest markers), extracted
    once; the pristine copies are kept as ``*.orig``."""
    tests = CACHE / 'tests'
    if (tests / 'test_models.py.orig').is_file():
        return tests
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE.parent) as tmp:
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:', '--quiet',
               f'timm=={timm.__version__}', '-d', tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        sdists = list(Path(tmp).glob('timm-*.tar.gz'))
        if res.returncode or not sdists:
            pytest.skip(f'cannot download the timm {timm.__version__} sdist from PyPI: {res.stderr.strip()[-300:]}')
        out = Path(tmp) / 'out'
        with tarfile.open(sdists[0]) as tf:
            prefix = tf.getnames()[0].split('/')[0]
            wanted = {f'{prefix}/{f}' for f in (
                'pyproject.toml', 'tests/__init__.py', 'tests/conftest.py', 'tests/test_models.py')}
            members = [m for m in tf.getmembers() if m.isfile() and m.name in wanted]
            for m in members:
                m.name = m.name[len(prefix) + 1:]
            safe = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}  # Python >= 3.11.4
            tf.extractall(out, members=members, **safe)
        for name in ('conftest.py', 'test_models.py'):
            (out / 'tests' / name).rename(out / 'tests' / f'{name}.orig')
        try:
            out.rename(CACHE)  # atomic: a concurrent run may have won the race, then use its copy
        except OSError:
            pass
    return tests


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f'.{path.name}.{os.getpid()}')
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic: a concurrent run may be importing the file


def _prepare(tests: Path, modules) -> None:
    """(Re)write the patched conftest and test_models.py from the pristine copies."""
    _write(tests / 'conftest.py', (tests / 'conftest.py.orig').read_text() + CONFTEST_PLUGIN)
    src = (tests / 'test_models.py.orig').read_text()
    patched, n = re.subn(r'^FEAT_INTER_FILTERS = \[', f'FEAT_INTER_FILTERS = {sorted(modules)!r} + [', src, count=1,
                         flags=re.M)
    assert n == 1, 'FEAT_INTER_FILTERS not found in timm tests/test_models.py: update test_timm_contract.py'
    _write(tests / 'test_models.py', patched)


def _shards(models, n: int):
    """Split the models into n lists of similar cost, biggest first. The cost proxy is the number of
    modules: TorchScript and FX work per module dominate at these input sizes, not FLOPs."""
    sizes = {m: len(list(timm.create_model(m, device='meta').modules())) for m in models}
    shards = [[] for _ in range(n)]
    for m in sorted(models, key=sizes.get, reverse=True):
        min(shards, key=lambda s: sum(sizes[x] for x in s)).append(m)
    return [s for s in shards if s]


@pytest.mark.timeout(1800)
def test_timm_model_tests_pass_on_our_models(tmp_path):
    models = _our_models()
    assert models, 'timm_kd registered no models'
    modules = {model_entrypoint(n).__module__.split('.')[-1] for n in models}
    run_all = os.environ.get('TIMM_KD_TIMM_TESTS_ALL', '1') not in ('0', 'false')
    required = set(REQUIRED) | ({SLOW} if run_all else set())
    if not run_all:
        models = _representatives(models)
    tests = _fetch_timm_tests()
    _prepare(tests, modules)

    # one single-threaded pytest per core: these small models do not scale over threads, processes do
    procs = []
    for i, shard in enumerate(_shards(models, max(1, min(2, os.cpu_count() or 1)))):
        report = tmp_path / f'junit{i}.xml'
        env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONDONTWRITEBYTECODE='1', TIMM_KD_MODELS=','.join(shard))
        cmd = [sys.executable, '-m', 'pytest', 'tests/test_models.py', '-q', '-p', 'no:cacheprovider',
               '-o', 'addopts=', f'--junitxml={report}', '-W', 'ignore::DeprecationWarning',
               '-W', 'ignore::FutureWarning', '--timeout', '600']
        if not run_all:
            cmd += ['-k', f'not {SLOW}']
        log = open(tmp_path / f'log{i}.txt', 'w')
        procs.append((subprocess.Popen(cmd, cwd=CACHE, env=env, stdout=log, stderr=subprocess.STDOUT), report, log))

    passed, failed, tails = defaultdict(set), [], []
    for proc, report, log in procs:
        try:
            rc = proc.wait(timeout=1700)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        tail = Path(log.name).read_text()[-3000:]
        tails.append(tail)
        assert report.is_file(), f'timm tests did not run:\n{tail}'
        for case in ET.parse(report).getroot().iter('testcase'):
            m = re.match(r'(\w+)\[(.*)\]$', case.get('name', ''))
            if not m:
                continue
            test, params = m.groups()
            model = next((p.split('.')[0] for p in params.split('-') if p.split('.')[0] in models), None)
            if case.find('failure') is not None or case.find('error') is not None:
                failed.append(f'{test}[{params}]')
            elif model and case.find('skipped') is None:
                passed[model].add(test)
        if rc and not failed:
            failed.append(f'pytest exit code {rc}')
    assert not failed, f'{len(failed)} timm tests failed: {failed[:20]}\n' + '\n'.join(tails)
    missing = {m: sorted(required - passed[m]) for m in models if required - passed[m]}
    assert not missing, f'timm tests that did not run/pass per model: {missing}'
