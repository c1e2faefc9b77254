"""The safe reads of ``timm_kd.utils.files``: no link followed, no FIFO waited on, nothing but regular files,
bounded sizes, depths and YAML alias expansion, each refusal one sentence naming the file."""
import json
import os

import pytest

from timm_kd.utils.errors import UsageError
from timm_kd.utils.files import (FileReadError, is_regular_file, open_regular, parse_json, parse_yaml, read_bytes,
                                 read_json, read_text, read_yaml)

SECRET = b'-----BEGIN OPENSSH PRIVATE KEY----- not for publishing\n'


def _one_sentence(e: BaseException, path) -> str:
    msg = str(e)
    assert isinstance(e, UsageError) and '\n' not in msg and msg.endswith('.') and str(path) in msg, msg
    return msg


@pytest.fixture
def secret(tmp_path):
    p = tmp_path / 'id_ed25519'
    p.write_bytes(SECRET)
    return p


@pytest.mark.parametrize('reader', [read_bytes, read_text, read_json, read_yaml])
def test_a_link_is_refused_and_its_target_never_read(tmp_path, secret, reader):
    link = tmp_path / 'results.json'
    link.symlink_to(secret)
    with pytest.raises(FileReadError) as e:
        reader(str(link))
    assert 'symbolic link' in _one_sentence(e.value, link) and SECRET.decode()[:20] not in str(e.value)
    assert not is_regular_file(str(link)) and is_regular_file(str(secret))


def test_append_never_writes_through_a_link(tmp_path, secret):
    link = tmp_path / 'log.txt'
    link.symlink_to(secret)
    with pytest.raises(FileReadError):
        open_regular(str(link), 'a')
    assert secret.read_bytes() == SECRET
    with open_regular(str(tmp_path / 'new.txt'), 'a') as f:  # a missing file is created
        f.write('one\n')
    with open_regular(str(tmp_path / 'new.txt'), 'a') as f:
        f.write('two\n')
    assert (tmp_path / 'new.txt').read_text() == 'one\ntwo\n'


@pytest.mark.timeout(60)  # a guard: a blocking open would hang here
@pytest.mark.parametrize('mode', ['rb', 'a'])
def test_a_fifo_is_refused_at_once(tmp_path, mode):
    fifo = tmp_path / 'results.json'
    os.mkfifo(fifo)
    with pytest.raises(FileReadError) as e:
        read_json(str(fifo)) if mode == 'rb' else open_regular(str(fifo), mode)
    assert 'named pipe (FIFO)' in _one_sentence(e.value, fifo)


def test_a_folder_or_device_is_not_a_file(tmp_path):
    with pytest.raises(FileReadError, match='is a folder'):
        read_text(str(tmp_path))
    with pytest.raises(FileReadError, match='character device'):
        read_bytes('/dev/zero')


def test_missing_files_give_the_default_or_one_sentence(tmp_path):
    missing = tmp_path / 'args.yaml'
    assert read_yaml(str(missing), default={}) == {} and read_json(str(missing), default=None) is None
    assert read_text(str(missing), default='') == '' and read_bytes(str(missing), default=b'x') == b'x'
    with pytest.raises(FileReadError) as e:
        read_yaml(str(missing))
    assert 'does not exist' in _one_sentence(e.value, missing)
    with pytest.raises(FileNotFoundError):
        open_regular(str(missing))


def test_size_limit(tmp_path):
    big = tmp_path / 'summary.csv'
    big.write_bytes(b'x' * 101)
    assert read_bytes(str(big), limit=101) == b'x' * 101
    with pytest.raises(FileReadError) as e:
        read_bytes(str(big), limit=100)
    assert 'larger than 100 bytes' in _one_sentence(e.value, big)


@pytest.mark.parametrize('data', [bytes(range(256)) * 4, b'epoch,eval_top1\n1,\x0050\n'])
def test_a_binary_file_is_not_text(tmp_path, data):
    p = tmp_path / 'summary.csv'
    p.write_bytes(data)
    with pytest.raises(FileReadError) as e:
        read_text(str(p))
    assert 'not UTF-8 text' in _one_sentence(e.value, p)


def test_json_depth_limit(tmp_path):
    p = tmp_path / 'results.json'
    p.write_text('[' * 100_000 + ']' * 100_000)  # deep enough to overflow the C parser's recursion limit
    with pytest.raises(FileReadError) as e:
        read_json(str(p))
    assert 'deeper than 64 levels' in _one_sentence(e.value, p)
    nested = {'a': [[{'b': 1}]]}
    assert parse_json(json.dumps(nested), 'x', max_depth=4) == nested
    with pytest.raises(FileReadError, match='deeper than 3 levels'):
        parse_json(json.dumps(nested), 'x', max_depth=3)
    with pytest.raises(FileReadError, match='is not valid JSON'):
        parse_json('{"a": ', 'x')


BOMB = '\n'.join(['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'] + [
    f'{c}: &{c} [' + ', '.join([f'*{p}'] * 9) + ']' for p, c in zip('abcdefgh', 'bcdefghi')])  # 9^9 values


@pytest.mark.timeout(60)  # a guard: expanding the bomb would take hours
def test_a_yaml_alias_bomb_is_refused_before_it_is_built(tmp_path):
    p = tmp_path / 'args.yaml'
    p.write_text(BOMB)
    with pytest.raises(FileReadError) as e:
        read_yaml(str(p))
    assert 'alias bomb' in _one_sentence(e.value, p)


def test_yaml_merge_keys_count_as_expansion():
    merges = 'a: &a {x: 1, y: 2}\n' + '\n'.join(
        f'{c}: &{c} {{<<: [{", ".join([f"*{p}"] * 4)}]}}' for p, c in zip('abcdefghijkl', 'bcdefghijklm'))
    with pytest.raises(FileReadError, match='alias bomb'):
        parse_yaml(merges, 'grid.yaml')


def test_yaml_limits_keep_ordinary_documents_and_shared_values():
    text = 'base: &b {lr: 0.05, decay: [150, 180, 210]}\nruns: [*b, *b]\nname: x\n'
    assert parse_yaml(text, 'grid.yaml') == {'base': {'lr': 0.05, 'decay': [150, 180, 210]},
                                             'runs': [{'lr': 0.05, 'decay': [150, 180, 210]}] * 2, 'name': 'x'}
    with pytest.raises(FileReadError, match='deeper than 3 levels'):
        parse_yaml('a: [[[1]]]', 'x', max_depth=3)
    with pytest.raises(FileReadError, match='deeper than 64 levels'):  # the depth an alias chain builds counts too
        parse_yaml('\n'.join(['a0: &a0 1'] + [f'a{i + 1}: &a{i + 1} [*a{i}]' for i in range(70)]), 'x')
    with pytest.raises(FileReadError, match='deeper than 64 levels'):
        parse_yaml('[' * 5000 + ']' * 5000, 'x')


@pytest.mark.parametrize('text, why', [
    ('!!python/object/apply:os.system ["echo hi"]', 'could not determine a constructor'),
    ('a: !custom 1', 'could not determine a constructor'),
    ('a: &a [*a]', 'an alias refers to a node that contains it (line 1, column 8)'),
    ('a: [1, 2', 'not valid YAML'),
])
def test_yaml_without_code_or_loops(text, why):
    with pytest.raises(FileReadError) as e:
        parse_yaml(text, '--set a')
    assert why in _one_sentence(e.value, '--set a')


@pytest.mark.parametrize('value, depth', [
    (1, 0), ([], 1), ({}, 1), ([[]], 2), ({'a': [{'b': [1, 2]}]}, 4), ({'a': {'b': {'c': {}}}}, 4)])
def test_json_and_yaml_count_levels_alike(value, depth):
    text = json.dumps(value)  # JSON is YAML
    for parse in (parse_json, parse_yaml):
        assert parse(text, 'x', max_depth=depth) == value
        if depth:
            with pytest.raises(FileReadError, match=f'deeper than {depth - 1} levels'):
                parse(text, 'x', max_depth=depth - 1)


def test_a_folder_lock_is_exclusive_and_ends_with_its_process(tmp_path):
    import signal
    import subprocess
    import sys
    from timm_kd.utils.files import LOCK_NAME, FolderLocked, folder_lock_holder, lock_folder
    run = tmp_path / 'run'
    run.mkdir()
    assert folder_lock_holder(str(run)) is None
    lock = lock_folder(str(run))
    assert folder_lock_holder(str(run))['pid'] == os.getpid()
    with pytest.raises(FolderLocked) as e:
        lock_folder(str(run))
    assert f'is in use by process {os.getpid()} on ' in _one_sentence(e.value, run) and e.value.holder['pid'] == \
        os.getpid()
    lock.close()
    assert folder_lock_holder(str(run)) is None
    # a process killed while it holds the lock leaves a lock file that nobody holds: the next process takes it
    code = (f'from timm_kd.utils.files import lock_folder; f = lock_folder({str(run)!r}); print(flush=True); '
            f'import time; time.sleep(600)')
    child = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    child.stdout.readline()  # the child holds the lock
    assert folder_lock_holder(str(run))['pid'] == child.pid
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert folder_lock_holder(str(run)) is None
    lock_folder(str(run)).close()
    (run / LOCK_NAME).unlink()
    (run / LOCK_NAME).symlink_to(tmp_path / 'elsewhere')
    with pytest.raises(FileReadError, match='symbolic link'):
        lock_folder(str(run))
    assert not (tmp_path / 'elsewhere').exists()
