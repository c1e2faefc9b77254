"""README and docs promises that drift silently otherwise: the model table, the set-up commands, links,
file paths named in the docs, and the rule that nothing in the repository cites a file outside it."""
import re
import subprocess
from pathlib import Path

import pytest
import timm
import torch.nn as nn
from timm.models import model_entrypoint

import timm_kd  # noqa: F401 - registers the models the table lists

REPO = Path(__file__).resolve().parents[1]
README = (REPO / 'README.md').read_text()
DOCS = sorted((REPO / 'docs').glob('*.md'))
PAGES = [REPO / 'README.md', REPO / 'CONTRIBUTING.md', *DOCS]


def _model_table() -> dict:
    section = README.split('## The CIFAR model zoo', 1)[1].split('\n## ', 1)[0]
    rows = re.findall(r'^\| `([a-z0-9_]+)` \| [^|]+ \| ([\d,]+) \|', section, re.M)
    return {name: int(params.replace(',', '')) for name, params in rows}


def test_model_table_lists_exactly_the_registered_models():
    registered = {n for n in timm.list_models() if model_entrypoint(n).__module__.startswith('timm_kd.')}
    assert set(_model_table()) == registered


def test_model_table_params_match_the_models():
    # the papers' convention: conv + fc weights and biases, BatchNorm excluded, 100 classes
    for name, params in _model_table().items():
        model = timm.create_model(name, num_classes=100, device='meta')
        counted = sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
                      for p in m.parameters(recurse=False))
        assert counted == params, name


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r'```bash\n(.*?)```', README.split('## Set-up: two commands', 1)[1], re.S)[0]
    test_command = commands.strip().splitlines()[-1].strip()
    ci = (REPO / '.ci' / 'run').read_text().splitlines()
    assert test_command in [line.strip() for line in ci]


def test_readme_is_short_and_links_every_docs_page():
    assert len(README.splitlines()) <= 300
    linked = set(re.findall(r'\]\((docs/[^)#]+\.md)', README))
    assert linked == {f'docs/{p.name}' for p in DOCS}


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    s = re.sub(r'[^\w\- ]', '', heading.strip().lower().replace('`', ''))
    return s.replace(' ', '-')


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = page.read_text()
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
        if re.match(r'[a-z]+://', target) or target.startswith('mailto:'):
            continue
        path, _, anchor = target.partition('#')
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f'{page.name}: link to missing {target}'
        if anchor and dest.suffix == '.md':
            anchors = {_anchor(h) for h in re.findall(r'^#+ (.+)$', dest.read_text(), re.M)}
            assert anchor in anchors, f'{page.name}: no heading for #{anchor} in {dest.name}'


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_repository_paths_named_in_docs_exist(page):
    text = page.read_text()
    for path in set(re.findall(r'`((?:configs|benchmarks|examples|tests|hfhub|timm_kd)/[\w./-]+\.(?:py|yaml|json|md))`',
                               text)):
        assert (REPO / path).exists(), f'{page.name} names {path}, which does not exist'


def test_nothing_cites_a_file_outside_the_repository():
    tracked = subprocess.run(['git', 'ls-files'], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in tracked:
        path = REPO / name
        if path.suffix not in ('.py', '.md', '.yaml', '.yml', '.toml', '.txt', '.cfg') or not path.is_file():
            continue
        text = path.read_text(errors='replace')
        # the first design brief and the research notes behind it live outside the repository
        if re.search(r'DESIGN\.md|\.\./shared/|paper-code-spec\.md|timm-integration\.md', text):
            offenders.append(name)
    assert offenders == []
