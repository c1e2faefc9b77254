"""The offline demo (examples/digits_demo.py) end to end on a reduced budget, in-process."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo():
    spec = importlib.util.spec_from_file_location('digits_demo', os.path.join(ROOT, 'examples', 'digits_demo.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_noise_band_verdicts():
    demo = _demo()
    assert 'within' in demo.compare(95.0, 94.5, 596)  # half a point on 596 images is noise
    assert 'larger than' in demo.compare(95.0, 85.0, 596)
    assert demo.compare(90.0, 91.0, 596).startswith('-1.00 points')
    assert demo._milestones(15) == [8, 11] and demo._milestones(2) == [1] and demo._milestones(1) == [1]


def test_demo_smoke_run_writes_table_json_markdown_and_plot(tmp_path, capsys):
    demo = _demo()
    out = tmp_path / 'demo'
    summary = demo.main(['--teacher-epochs', '2', '--epochs', '1', '--train-num-samples', '128',
                         '--val-num-samples', '64', '--jobs', '1', '--output', str(out)])
    printed = capsys.readouterr().out
    assert '| KD+TLCutMix+pick | resnet8 |' in printed and 'Teacher resnet14: top-1' in printed
    data = json.loads((out / 'results.json').read_text())
    assert [r['run'] for r in data['runs']] == ['teacher', 'student_ce', 'student_kd', 'student_kd_tlcutmix_pick']
    assert len(data['curves']['teacher']) == 2 and len(data['curves']['student_kd']) == 1
    assert data['n_val'] == 64 and 0 <= data['teacher']['top1'] <= 100
    # the KD runs really distilled from the demo's teacher checkpoint and measured it first
    kd = json.loads((out / 'runs' / 'student_kd_tlcutmix_pick' / 'results.json').read_text())
    assert kd['teacher'] == 'resnet14' and kd['teacher_top1'] == pytest.approx(data['teacher']['top1'])
    assert kd['recipe']['pick'] == 'kld' and kd['recipe']['tl_cutmix'] == 1.0
    assert kd['recipe']['input_size'] == [3, 12, 12] and kd['recipe']['std_aug'] == 'crop'
    assert kd['recipe']['crop_padding'] == 2
    assert json.loads((out / 'runs' / 'student_ce' / 'results.json').read_text())['teacher'] is None
    assert (out / 'results.md').read_text().startswith('# timm-kd offline demo')
    assert (out / 'accuracy.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert summary['output'] == str(out)
    # the demo ends with timm_kd.report's table and figures on its runs
    report_md = (out / 'report.md').read_text()
    assert report_md.startswith('| run | n | best top-1 | last top-1 | Δ best | Δ last | note |')
    assert '| student_kd_tlcutmix_pick | 1 |' in report_md and report_md in printed
    for name in ('accuracy', 'pick_diagnostics'):
        assert (out / 'figures' / f'{name}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    with pytest.raises(SystemExit, match='not empty'):
        demo.main(['--output', str(out)])
