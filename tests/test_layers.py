"""The layers of docs/design.md hold: import-linter's contracts (pyproject.toml) pass on the package, and an
import that runs uphill (the four the layering once had, a tool or a script imported by the library) breaks
them. The old tool names (``timm_kd.sweep``, ...) are the moved modules themselves."""
import importlib
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = 'import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))'


def _lint(root: str) -> subprocess.CompletedProcess:
    """``lint-imports`` with ``root``'s pyproject.toml over ``root``'s timm_kd (not an installed copy)."""
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, '-c', LINT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def test_import_contracts_hold():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'BROKEN' not in res.stdout and 'Contracts: 3 kept, 0 broken.' in res.stdout


# (module, the import put back, the contract it breaks)
UPHILL = {
    'data imports distill': ('data/mixup.py', 'from timm_kd.distill.pick import PICK_CRITERIA', 'Layers'),
    'distill imports hub': ('distill/teacher.py', 'from timm_kd.hub.io import explain_hub_error, hub_endpoint',
                            'Layers'),
    'train imports a tool': ('train/loop.py', 'from timm_kd.da_score import TeacherProbStats', 'old name'),
    'train imports experiments': ('train/loop.py', 'from timm_kd.experiments.da_score import TeacherProbStats',
                                  'Layers'),
    'library imports the script': ('train/build.py', 'import train_kd', 'old name or a script'),
    'experiments import the Hub CLI': ('experiments/report.py', 'from timm_kd.hub.cli import publish_main',
                                       'the Hub CLI'),
}


@pytest.mark.parametrize('case', sorted(UPHILL))
def test_an_uphill_import_breaks_a_contract(tmp_path, case):
    module, line, contract = UPHILL[case]
    shutil.copytree(os.path.join(ROOT, 'timm_kd'), tmp_path / 'timm_kd',
                    ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(os.path.join(ROOT, 'pyproject.toml'), tmp_path)
    with open(tmp_path / 'timm_kd' / module, 'a') as f:
        f.write(f'\n{line}  # put back\n')  # read, never run: import-linter parses the source
    res = _lint(str(tmp_path))
    assert res.returncode != 0, res.stdout
    broken = [ln for ln in res.stdout.splitlines() if ln.rstrip().endswith('BROKEN')]
    assert any(contract in ln for ln in broken), res.stdout


@pytest.mark.parametrize('old, new', [
    ('timm_kd.sweep', 'timm_kd.experiments.sweep'), ('timm_kd.report', 'timm_kd.experiments.report'),
    ('timm_kd.figures', 'timm_kd.experiments.figures'), ('timm_kd.da_score', 'timm_kd.experiments.da_score'),
    ('timm_kd.features', 'timm_kd.experiments.feature_space'),
    ('timm_kd.feature_space', 'timm_kd.experiments.feature_space'),
    ('timm_kd.messages', 'timm_kd.utils.messages'), ('timm_kd.distill.features', 'timm_kd.distill.intermediates'),
])
def test_old_module_names_are_the_moved_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_python_m_old_names_run_the_moved_commands():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    code = ('import runpy, sys\n'
            'for name in ("timm_kd.sweep", "timm_kd.report", "timm_kd.da_score", "timm_kd.features"):\n'
            '    sys.argv = [name, "--help"]\n'
            '    try:\n'
            '        runpy.run_module(name, run_name="__main__", alter_sys=True)\n'
            '    except SystemExit as e:\n'
            '        assert e.code in (0, None), (name, e.code)\n')
    res = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    for prog in ('sweep', 'report', 'da_score', 'features'):
        assert f'usage: python -m timm_kd.{prog}' in res.stdout


def test_names_of_split_modules_stay_importable_from_their_old_homes():
    from timm_kd.train import args, checkpoint, parser, state
    from timm_kd.utils import files
    assert checkpoint.atomic_write_text is files.atomic_write_text and checkpoint.TEMP_PREFIX == files.TEMP_PREFIX
    assert checkpoint.capture_rng_state is state.capture_rng_state and state.Training is state.LiveRun
    assert args.build_parser is parser.build_parser and args.report_error is parser.report_error
    assert args.PICK_CHOICES == parser.PICK_CHOICES == ('none', 'kld', 't_ent', 's_ent', 'random')
