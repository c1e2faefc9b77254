"""train_kd.py end to end on tiny inputs: outputs, schedule, bad input, exact resume (in-process, after a
SIGKILL, with data loader workers) and a real 2-process ``accelerate launch`` on CPU.

Runs use resnet8 on 16x16 synthetic images (10 classes) with a random resnet8 teacher: a few steps each.
"""
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import yaml

import timm_kd
from timm_kd.train.args import parse_args, validate_args
from timm_kd.train.schedule import create_kd_scheduler
from timm_kd.train.state import TrainState

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'train_kd.py'
BASE = ['--model', 'resnet8', '--dataset', 'synthetic/10x16', '--train-num-samples', '96', '--val-num-samples', '32',
        '-b', '16', '--workers', '0', '--lr', '0.05', '--warmup-epochs', '0', '--log-interval', '2', '--seed', '3']
SUMMARY_KD_COLUMNS = {'epoch', 'train_loss', 'train_task_loss', 'train_kd_loss', 'train_mixed_loss', 'train_kl_ratio',
                      'train_label_disagreement', 'train_picked_share', 'train_top1', 'eval_loss', 'eval_top1',
                      'eval_top5', 'lr'}
RESULT_KEYS = {'model', 'teacher', 'teacher_top1', 'best_top1', 'best_top5', 'best_epoch', 'last_top1', 'last_top5',
               'num_classes', 'dataset', 'recipe'}


COVERS = ('--resume', '--checkpoint-every', '--workers', '--dist-bn', '--no-ddp-bb', '--push-to-hub', '--teacher',
          '--teacher-checkpoint', '--tl-cutmix', '--tl-mixup', '--cutmix-hard', '--cutout', '--pick',
          '--pick-candidates', '--pick-ratio', '--mix-fraction', '--mix-pairing', '--opt', '--wd-all-params',
          '--weight-decay', '--sched', '--decay-milestones', '--epoch-scale', '--model-ema', '--num-classes', '--config',
          '--model-kwargs')

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def kd(teacher_ckpt):
    return ['--teacher', 'resnet8', '--teacher-checkpoint', teacher_ckpt, '--tl-cutmix', '--pick', 'kld']


def _state(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def _assert_same_weights(a, b):
    sa, sb = _state(a)['state_dict'], _state(b)['state_dict']
    assert sa.keys() == sb.keys()
    diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not diff, f'weights differ: {diff[:5]}'


def _rows(run_dir):
    with open(Path(run_dir) / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


def _env():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


# ------------------------------------------------------------------------------------------------ schedule
CRD = ['--model', 'resnet8', '--sched', 'multistep_torch', '--lr', '0.05', '--epochs', '240', '--warmup-epochs', '0',
       '--decay-milestones', '150', '180', '210', '--decay-rate', '0.1', '--opt', 'momentum', '--weight-decay', '5e-4',
       '--wd-all-params']


def _lrs_per_epoch(argv, updates_per_epoch=5):
    """The lr of every epoch as train_kd's loop sets it (step(epoch + 1) after each epoch)."""
    args, explicit = parse_args(argv)
    validate_args(args, explicit)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    sched, num_epochs = create_kd_scheduler(opt, args, updates_per_epoch)
    lrs = []
    for e in range(num_epochs):
        lrs.append(opt.param_groups[0]['lr'])
        for u in range(updates_per_epoch):  # the loop also calls step_update after every update: a no-op here
            sched.step_update(e * updates_per_epoch + u + 1)
            assert opt.param_groups[0]['lr'] == lrs[-1]
        sched.step(e + 1)
    return lrs


@pytest.mark.parametrize('k', [1, 2])
def test_multistep_torch_lr_equals_torch_multisteplr_every_epoch(k):
    lrs = _lrs_per_epoch(CRD + ['--epoch-scale', str(k)])
    assert len(lrs) == 240 * k
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[150 * k, 180 * k, 210 * k], gamma=0.1)
    for epoch, lr in enumerate(lrs):
        assert math.isclose(lr, opt.param_groups[0]['lr'], rel_tol=1e-12), (epoch, lr, opt.param_groups[0]['lr'])
        opt.step()
        ref.step()
    assert lrs[150 * k - 1] == 0.05 and math.isclose(lrs[150 * k], 0.005)  # CRD: x0.1 *after* 150 epochs


def test_epoch_scale_4_gives_960_epochs_with_decays_at_600_720_840():
    lrs = _lrs_per_epoch(CRD + ['--epoch-scale', '4'], updates_per_epoch=1)
    assert len(lrs) == 960
    assert [e for e in range(1, 960) if lrs[e] != lrs[e - 1]] == [600, 720, 840]


def test_timm_multistep_keeps_its_meaning_one_epoch_earlier():
    lrs = _lrs_per_epoch([a if a != 'multistep_torch' else 'multistep' for a in CRD], updates_per_epoch=1)
    assert [e for e in range(1, 240) if lrs[e] != lrs[e - 1]] == [149, 179, 209]


def test_multistep_torch_per_update_matches_torch_per_update():
    args, _ = parse_args(['--model', 'resnet8', '--sched', 'multistep_torch', '--sched-on-updates', '--lr', '0.1',
                          '--epochs', '4', '--warmup-epochs', '0', '--decay-milestones', '1', '3'])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched, _ = create_kd_scheduler(opt, args, updates_per_epoch=3)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.MultiStepLR(ref_opt, milestones=[3, 9], gamma=0.1)
    for u in range(12):
        assert math.isclose(opt.param_groups[0]['lr'], ref_opt.param_groups[0]['lr'], rel_tol=1e-12), u
        sched.step_update(u + 1)
        ref_opt.step()
        ref.step()


# ------------------------------------------------------------------------------------------------ end to end
def test_kd_tlcutmix_pick_run_writes_timm_layout(tmp_path, train_kd, teacher_ckpt, capsys):
    res = train_kd.main(BASE + kd(teacher_ckpt) + [
        '--epochs', '2', '--opt', 'momentum', '--weight-decay', '5e-4', '--wd-all-params', '--output', str(tmp_path),
        '--experiment', 'e2e'])
    run = tmp_path / 'e2e'
    assert {p.name for p in run.iterdir()} >= {'args.yaml', 'summary.csv', 'log.txt', 'last.pth.tar',
                                               'model_best.pth.tar', 'results.json'}
    # results: returned == results.json, contract keys, teacher accuracy measured
    on_disk = json.loads((run / 'results.json').read_text())
    assert RESULT_KEYS <= on_disk.keys() and on_disk == json.loads(json.dumps(res))
    assert res['finished'] and res['last_epoch'] == 1 and res['model'] == 'resnet8' and res['num_classes'] == 10
    # the teacher's accuracy, recomputed: its weights on the 32 eval images, normalized as the run records
    from torchvision import transforms as T
    from timm_kd.data.datasets import SyntheticDataset
    dc = res['data_config']
    val = SyntheticDataset(10, 16, split='validation', num_samples=32,
                           transform=T.Compose([T.ToTensor(), T.Normalize(dc['mean'], dc['std'])]))
    teacher = timm.create_model('resnet8', num_classes=10)
    teacher.load_state_dict(torch.load(teacher_ckpt, weights_only=True))
    with torch.no_grad():
        top5 = [(teacher.eval()(x[None])[0].topk(5).indices == y).tolist() for x, y in val]
    assert math.isclose(res['teacher_top1'], 100. * sum(t[0] for t in top5) / len(top5))
    assert math.isclose(res['teacher_top5'], 100. * sum(any(t) for t in top5) / len(top5))
    assert (res['best_top1'], res['last_top1']) == (max(float(r['eval_top1']) for r in _rows(run)),
                                                    float(_rows(run)[-1]['eval_top1']))
    assert res['recipe']['pick'] == 'kld' and res['recipe']['tl_cutmix'] == 1.0 and res['recipe']['epochs'] == 2
    # summary: one row per epoch with the loss parts and diagnostics
    rows = _rows(run)
    assert [r['epoch'] for r in rows] == ['0', '1'] and SUMMARY_KD_COLUMNS <= rows[0].keys()
    assert float(rows[-1]['train_picked_share']) == 0.5 and float(rows[-1]['train_kl_ratio']) >= 1.0
    assert math.isclose(float(rows[-1]['eval_top1']), res['last_top1'])
    # log: teacher accuracy before the first step, progress, final best/last line
    log = (run / 'log.txt').read_text()
    assert log.index('Teacher resnet8: top-1') < log.index('Train: 0 [')
    assert 'Best top-1' in log.splitlines()[-1] and 'last top-1' in log.splitlines()[-1]
    assert 'Best top-1' in capsys.readouterr().out
    # args.yaml replays the run's flags
    assert yaml.safe_load((run / 'args.yaml').read_text())['pick'] == 'kld'
    # checkpoint: timm keys + resume state, loads without unpickling code, in timm and in timm_kd
    ck = _state(run / 'last.pth.tar')
    assert {'arch', 'args', 'epoch', 'metric', 'state_dict', 'optimizer', 'scheduler', 'rank_states', 'next_epoch',
            'next_step'} <= ck.keys() and (ck['arch'], ck['epoch'], ck['next_epoch']) == ('resnet8', 1, 2)
    m = timm.create_model('resnet8', num_classes=10, checkpoint_path=str(run / 'last.pth.tar'))
    assert all(torch.equal(v, ck['state_dict'][k]) for k, v in m.state_dict().items())
    sd, _ = timm_kd.read_kd_checkpoint(run / 'model_best.pth.tar')
    assert sd.keys() == ck['state_dict'].keys()
    # --opt momentum --wd-all-params: classic SGD, weight decay on every parameter (CRD)
    groups = ck['optimizer']['param_groups']
    assert len(groups) == 1 and groups[0]['weight_decay'] == 5e-4 and groups[0]['nesterov'] is False
    assert len(groups[0]['params']) == len(list(m.parameters()))


def test_plain_ce_run_timm_mixup_ema_schedule_and_no_overwrite(tmp_path, train_kd):
    argv = BASE + ['--mixup', '0.2', '--cutmix', '1.0', '--model-ema', '--model-ema-decay', '0.9', '--sched',
                   'multistep_torch', '--decay-milestones', '1', '2', '--lr', '0.1', '--epochs', '3',
                   '--weight-decay', '1e-4', '--output', str(tmp_path), '--experiment', 'ce']
    res = train_kd.main(argv)
    rows = _rows(tmp_path / 'ce')
    assert [float(r['lr']) for r in rows] == pytest.approx([0.1, 0.01, 0.001], rel=1e-9)
    assert 'eval_ema_top1' in rows[0] and 'train_kd_loss' not in rows[0]
    assert res['teacher'] is None and res['teacher_top1'] is None and res['finished']
    groups = _state(tmp_path / 'ce' / 'last.pth.tar')['optimizer']['param_groups']
    assert sorted(g['weight_decay'] for g in groups) == [0.0, 1e-4]  # timm default: no decay on bias / norm
    # same --experiment again: a new folder '<name>-1', the first run untouched
    before = (tmp_path / 'ce' / 'last.pth.tar').read_bytes()
    res2 = train_kd.main(BASE + ['--epochs', '1', '--train-num-samples', '16', '--output', str(tmp_path),
                                 '--experiment', 'ce'])
    assert Path(res2['run_dir']).name == 'ce-1' and (tmp_path / 'ce' / 'last.pth.tar').read_bytes() == before


def test_odd_batch_with_derangement_pairing_trains(tmp_path, train_kd, teacher_ckpt):
    res = train_kd.main(BASE + kd(teacher_ckpt) + ['-b', '15', '--train-num-samples', '45', '--epochs', '1',
                                                   '--output', str(tmp_path), '--experiment', 'odd'])
    assert res['finished'] and res['recipe']['batch_size'] == 15


def test_nonfinite_loss_stops_with_the_step(tmp_path, train_kd, capsys):
    with pytest.raises(SystemExit) as e:
        train_kd.main(BASE + ['--lr', '1e30', '--epochs', '1', '--output', str(tmp_path), '--experiment', 'nan'])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'non-finite at epoch 0 step' in err[0]
    assert not (tmp_path / 'nan' / 'last.pth.tar').exists()


# ------------------------------------------------------------------------------------------------ bad input
def _bad(tmp_path, teacher_ckpt):
    five = tmp_path / 'five.pth'
    torch.save(timm.create_model('resnet8', num_classes=5).state_dict(), five)
    wrong = tmp_path / 'wrong.pth.tar'  # a valid checkpoint of a 5-class resnet8
    torch.save(TrainState(
        arch='resnet8', args={}, epoch=0, metric=None,
        state_dict=timm.create_model('resnet8', num_classes=5).state_dict(),
        next_epoch=1, next_step=0, optimizer={}, scheduler=None, scaler=None, world_size=1, rank_states=[],
        num_classes=5, data_config={}, best={}, last={}, teacher_metrics=None, checkpoint_hist=[]).to_dict(), wrong)
    cfg = tmp_path / 'typo.yaml'
    cfg.write_text('modle: resnet8\n')
    bad_cfgs = []  # values the command line would refuse are refused in a config file too
    for i, text in enumerate(('sched: multistepp\n', 'batch_size: 16.5\n', 'input_size: [3, 16]\n', 'amp: 1\n')):
        bad_cfgs.append(tmp_path / f'bad{i}.yaml')
        bad_cfgs[-1].write_text(text)
    t = ['--teacher', 'resnet8', '--teacher-checkpoint', teacher_ckpt]
    return [
        (['--model', 'no_such_net'], 'Unknown model'),
        (['--teacher', 'no_such_teacher'], 'Unknown teacher'),
        (['--pick', 'kld'], 'needs a teacher'),
        (t + ['--pick', 'kld'], 'needs a mixing mode'),
        (t + ['--tl-cutmix', '--cutmix-hard'], 'cannot be combined'),
        (t + ['--tl-cutmix', '--mixup', '0.2'], 'one or the other'),
        (t + ['--tl-cutmix', '--mix-pairing', 'flip', '-b', '15'], 'even --batch-size'),
        (['--mixup', '0.2', '-b', '15'], 'even --batch-size'),
        (['--teacher', 'resnet8', '--teacher-checkpoint', str(five)], '5 classes'),
        (['--num-classes', '7'], 'does not match'),
        (['--model', 'resnet14', '--initial-checkpoint', teacher_ckpt], 'does not fit'),
        (['--resume', str(wrong)], 'does not fit'),
        (['--resume', str(tmp_path / 'missing')], 'does not exist'),
        (['--dataset', 'torch/cifar10', '--data-dir', str(tmp_path / 'nodata')], '--dataset-download'),
        (['--config', str(cfg)], 'unknown keys'),
        (['--config', str(bad_cfgs[0])], "sched: 'multistepp' is not one of"),
        (['--config', str(bad_cfgs[1])], 'batch_size: 16.5 must be an integer'),
        (['--config', str(bad_cfgs[2])], 'needs 3 values'),
        (['--config', str(bad_cfgs[3])], 'must be true or false'),
        (['--dataset', 'cifar100'], 'did you mean torch/cifar100'),
        (['--aa', 'rand-m9-mstd0.5'], '128 px'),
        (['--opt', 'sgdd'], 'Unknown optimizer'),
    ]


def test_bad_input_fails_fast_with_one_sentence(tmp_path, train_kd, teacher_ckpt, capsys):
    out = tmp_path / 'out'
    for extra, phrase in _bad(tmp_path, teacher_ckpt):
        with pytest.raises(SystemExit) as e:
            train_kd.main(BASE + ['--epochs', '1', '--output', str(out)] + extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2, extra
        assert len(err) == 1 and err[0].startswith('train_kd.py: error: ') and phrase in err[0], (extra, err)
        assert not out.exists() or not any(out.iterdir()), f'{extra} created a run folder'


def test_the_teacher_is_checked_first_and_built_after_the_data(tmp_path, train_kd, teacher_ckpt, capsys, monkeypatch):
    """Where the teacher's weights come from is checked before any data is read (cheap: at most one quick Hub
    request); a missing dataset is reported before the teacher is built (which may be a Hub download)."""
    import shutil
    from huggingface_hub import constants as hf_constants
    from timm_kd.distill import teacher as teacher_lib
    from timm_kd.hub import convert_teacher
    monkeypatch.setattr(hf_constants, 'ENDPOINT', 'http://127.0.0.1:9')  # unreachable, should it be tried
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(hf_constants, 'HF_ASSETS_CACHE', str(tmp_path / 'assets'))
    stored = convert_teacher(teacher_ckpt, timm_kd.models.store_dir(), arch='resnet8')['folder']  # resnet8.cifar100
    calls = []
    real = teacher_lib.create_teacher
    monkeypatch.setattr(teacher_lib, 'create_teacher', lambda *a, **kw: calls.append(a) or real(*a, **kw))
    missing = ['--model', 'resnet8', '--teacher', 'resnet8', '--dataset', 'torch/cifar100', '--data-dir',
               str(tmp_path / 'nodata'), '--epochs', '1', '--output', str(tmp_path / 'out')]
    with pytest.raises(SystemExit) as e:
        train_kd.main(missing)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and '--dataset-download' in err[0], err
    assert calls == [], 'the teacher was built (a Hub download) before the dataset was checked'
    # with no weights anywhere, the teacher is what is reported, before the missing data
    shutil.rmtree(stored)
    with pytest.raises(SystemExit) as e:
        train_kd.main(missing)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "'timm-kd/resnet8.cifar100'" in err[0], err
    assert 'HF_HUB_OFFLINE=1' in err[0] and calls == []
    # the data there and the teacher in the store: the teacher is built from it and the run trains
    convert_teacher(teacher_ckpt, timm_kd.models.store_dir(), arch='resnet8')
    res = train_kd.main(BASE + ['--teacher', 'resnet8', '--train-num-samples', '16', '--val-num-samples', '8',
                                '--epochs', '1', '--output', str(tmp_path / 'out')])
    assert res['finished'] and calls and res['teacher_source'] == 'local-dir:resnet8.cifar100'


def test_config_values_are_read_like_flags_and_kwargs_errors_are_argparse_errors(tmp_path, train_kd, capsys):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text('decay_milestones: 150\nlr: 1\nexperiment: 2024\nmodel_kwargs: {zero_init_last: false}\n')
    args, _ = parse_args(['--config', str(cfg)])
    assert (args.decay_milestones, args.lr, args.experiment) == ([150], 1.0, '2024')
    assert args.model_kwargs == {'zero_init_last': False} and isinstance(args.lr, float)
    with pytest.raises(SystemExit) as e:
        train_kd.main(BASE + ['--model-kwargs', 'foo'])
    assert e.value.code == 2 and 'expected key=value pairs' in capsys.readouterr().err
    args, _ = parse_args(['--model-kwargs', 'a=1', 'b=x', 'c=[1, 2]'])
    assert args.model_kwargs == {'a': 1, 'b': 'x', 'c': [1, 2]}


# ------------------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize('workers', [0, 2])
def test_resume_is_bit_exact(tmp_path, train_kd, teacher_ckpt, workers):
    common = BASE + kd(teacher_ckpt) + ['--epochs', '2', '--workers', str(workers), '--checkpoint-every', '4',
                                        '--checkpoint-hist', '2', '--output', str(tmp_path)]
    train_kd.main(common + ['--experiment', 'ref'])
    ref = tmp_path / 'ref'
    rec = _state(ref / 'recovery.pth.tar')
    assert (rec['next_epoch'], rec['next_step']) == (1, 4)  # mid-epoch: 4 of 6 steps of epoch 1 done
    starts = {'mid': 'recovery.pth.tar'} if workers else {'mid': 'recovery.pth.tar', 'boundary': 'checkpoint-0.pth.tar'}
    for name, file in starts.items():
        src = tmp_path / f'src_{name}'
        src.mkdir()
        shutil.copy(ref / file, src / file)
        res = train_kd.main(common + ['--resume', str(src / file), '--experiment', name])
        assert res['finished']
        _assert_same_weights(ref / 'last.pth.tar', tmp_path / name / 'last.pth.tar')
        assert _rows(tmp_path / name)[-1] == _rows(ref)[-1]  # same losses, diagnostics and eval after resume


def test_sigkill_mid_run_then_resume_gives_the_same_weights(tmp_path, train_kd, teacher_ckpt):
    argv = BASE + kd(teacher_ckpt) + ['--epochs', '4', '--checkpoint-every', '2', '--output', str(tmp_path)]
    run = tmp_path / 'killed'
    p = subprocess.Popen([sys.executable, str(SCRIPT), *argv, '--experiment', 'killed'], env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / 'recovery.pth.tar').exists():
        assert p.poll() is None, f'the run ended before its first recovery checkpoint: {p.stderr.read()}'
        assert time.time() < deadline, 'no recovery checkpoint after 300 s'
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    assert not (run / 'results.json').exists() or not json.loads((run / 'results.json').read_text())['finished']
    # resume with nothing but the run folder (flags come from its args.yaml); in-process saves an interpreter start
    assert train_kd.main(['--resume', str(run)])['finished']
    train_kd.main(argv + ['--experiment', 'uninterrupted'])  # one thread, as the subprocesses
    _assert_same_weights(tmp_path / 'uninterrupted' / 'last.pth.tar', run / 'last.pth.tar')
    assert _rows(run) == _rows(tmp_path / 'uninterrupted')  # every epoch once, identical numbers
    assert json.loads((run / 'results.json').read_text())['finished']


# ------------------------------------------------------------------------------------------------ 2 processes
def test_two_process_accelerate_launch_kd_pick_and_exact_resume(tmp_path, train_kd, teacher_ckpt):
    """Also: the processes' BatchNorm statistics differ inside an epoch (each updates them on its own batches,
    --no-ddp-bb), --dist-bn reduce makes them one at every epoch end, and a 2-process checkpoint resumes with
    1 process after the samples both had seen."""
    launch = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
              '--num_machines', '1', '--main_process_port', '0', '--mixed_precision', 'no', '--dynamo_backend', 'no',
              str(SCRIPT)]
    # 192 samples: 96 per process, 6 steps of 16 per epoch
    argv = BASE + kd(teacher_ckpt) + ['--train-num-samples', '192', '--epochs', '2', '--checkpoint-every', '4',
                                      '--no-ddp-bb', '--dist-bn', 'reduce', '--opt', 'adamw', '--lr', '0.005',
                                      '--output', str(tmp_path)]
    r = subprocess.run(launch + argv + ['--experiment', 'a'], env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    a = tmp_path / 'a'
    res = json.loads((a / 'results.json').read_text())
    assert res['world_size'] == 2 and res['ranks_in_sync'] and res['finished']
    assert res['recipe']['global_batch_size'] == 32
    assert 'Training with 2 process(es)' in r.stdout and r.stdout.count('*** Best top-1') == 1  # rank 0 logs
    assert [row['epoch'] for row in _rows(a)] == ['0', '1']
    rec = _state(a / 'recovery.pth.tar')
    assert (rec['next_epoch'], rec['next_step'], rec['world_size'], len(rec['rank_states'])) == (1, 4, 2, 2)
    last = _state(a / 'last.pth.tar')
    running = [k for k in last['state_dict'] if k.endswith(('running_mean', 'running_var'))]
    mid = [s['buffers'] for s in rec['rank_states']]
    assert any(not torch.equal(mid[0][k], mid[1][k]) for k in running), 'the processes kept the same statistics'
    end = [s['buffers'] for s in last['rank_states']]
    for k in running:  # synchronized at the epoch end, and that is what the checkpoint holds
        assert torch.equal(end[0][k], end[1][k]) and torch.equal(end[0][k], last['state_dict'][k]), k
    src = tmp_path / 'src'
    src.mkdir()
    shutil.copy(a / 'recovery.pth.tar', src / 'recovery.pth.tar')
    r = subprocess.run(launch + argv + ['--resume', str(src / 'recovery.pth.tar'), '--experiment', 'b'], env=_env(),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_weights(a / 'last.pth.tar', tmp_path / 'b' / 'last.pth.tar')
    assert _rows(tmp_path / 'b')[-1] == _rows(a)[-1]
    # 1 process: 4 steps x 16 images x 2 processes = 128 of 192 samples seen -> step 8 of 12, 4 updates left
    res = train_kd.main(argv + ['--resume', str(src / 'recovery.pth.tar'), '--experiment', 'c'])
    assert res['finished'] and res['world_size'] == 1 and [r['epoch'] for r in _rows(tmp_path / 'c')] == ['1']
    steps = {int(s['step']) for s in _state(tmp_path / 'c' / 'last.pth.tar')['optimizer']['state'].values()}
    assert steps == {6 + 4 + 4}  # Adam counts every update: epoch 0, 4 of epoch 1 on 2 processes, 4 on 1


# ------------------------------------------------------------------------------------------------ --push-to-hub
def test_push_to_hub_after_training_and_a_failed_push_keeps_the_run(tmp_path, train_kd, teacher_ckpt, monkeypatch):
    from huggingface_hub import constants as hf_constants
    from hub_server import HubServer  # tests/hub_server.py: a local Hub-compatible server
    argv = BASE + kd(teacher_ckpt) + ['--epochs', '1', '--train-num-samples', '32', '--output', str(tmp_path)]
    with HubServer(lifetime=120) as srv:
        monkeypatch.setattr(hf_constants, 'ENDPOINT', srv.endpoint)
        monkeypatch.setattr(hf_constants, 'HUGGINGFACE_CO_URL_TEMPLATE',
                            srv.endpoint + '/{repo_id}/resolve/{revision}/{filename}')
        monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path / 'hf_cache'))
        monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', False)
        monkeypatch.setattr(hf_constants, 'HF_HUB_DISABLE_XET', True)
        monkeypatch.setenv('HF_TOKEN', 'hf_train_kd_test_token')
        res = train_kd.main(argv + ['--push-to-hub', 'kduser/resnet8.pushed', '--experiment', 'push'])
        assert res['hub_url'] == f'{srv.endpoint}/kduser/resnet8.pushed'
        assert json.loads((tmp_path / 'push' / 'results.json').read_text())['hub_url'] == res['hub_url']
        assert 'model.safetensors' in srv.files('kduser/resnet8.pushed')
        loaded = timm.create_model('hf-hub:kduser/resnet8.pushed', pretrained=True)
        best = _state(tmp_path / 'push' / 'model_best.pth.tar')['state_dict']
        assert all(torch.equal(v, best[k]) for k, v in loaded.state_dict().items())
        # a failing upload: reported in the results (exit code 1 from the command line), the run stays complete
        srv.add_fault('POST', r'/commit/main$', 500, count=-1)
        res = train_kd.main(argv + ['--push-to-hub', 'kduser/resnet8.failed', '--experiment', 'fail'])
        assert res['hub_url'] is None and res['hub_error'] and res['finished']
        assert {'last.pth.tar', 'model_best.pth.tar', 'results.json', 'summary.csv'} <= \
            {p.name for p in (tmp_path / 'fail').iterdir()}


def test_teacher_lineage_reaches_results_and_the_model_card(tmp_path, train_kd):
    """results.json names where the teacher came from (file name only, no local path), and so does the card."""
    from timm_kd.hub import publish_student
    from timm_kd.messages import public_ref
    torch.manual_seed(0)
    ckpt = tmp_path / 'private' / 'dir' / 'rd_teacher.pth'  # RepDistiller format with its reported accuracy
    ckpt.parent.mkdir(parents=True)
    torch.save({'epoch': 240, 'model': timm.create_model('resnet8', num_classes=10).state_dict(), 'accuracy': 71.25},
               ckpt)
    res = train_kd.main(BASE + ['--teacher', 'resnet8', '--teacher-checkpoint', str(ckpt), '--epochs', '1',
                                '--train-num-samples', '16', '--output', str(tmp_path / 'out'), '--experiment', 'l'])
    text = (Path(res['run_dir']) / 'results.json').read_text()
    on_disk = json.loads(text)
    assert on_disk['teacher_source'] == on_disk['teacher_checkpoint'] == 'rd_teacher.pth'
    assert on_disk['teacher_checkpoint_accuracy'] == pytest.approx(71.25) and 'private' not in text
    card = (Path(publish_student(res['run_dir'], 'kduser/resnet8.lineage', dry_run=True)) / 'README.md').read_text()
    assert '(weights: `rd_teacher.pth`)' in card and 'private' not in card
    # no teacher: the keys are there, empty
    plain = train_kd.main(BASE + ['--epochs', '1', '--train-num-samples', '16', '--output', str(tmp_path / 'out')])
    assert plain['teacher_source'] is None and plain['teacher_checkpoint'] is None
    # Hub references stay, URLs lose credentials / signed query strings, local folders keep only their name
    assert public_ref('hf-hub:org/t.cifar100/ckpt.pth') == 'hf-hub:org/t.cifar100/ckpt.pth'
    assert public_ref('https://u:hf_secret@host:8/t/w.pth?token=hf_secret#x') == 'https://host:8/t/w.pth'
    assert public_ref('local-dir:/home/me/teachers/t/') == 'local-dir:t'
    assert public_ref('C:\\ckpts\\t.pth') == 't.pth'


@pytest.mark.parametrize('views,columns,absent', [
    (['--cutmix-hard'], {'train_mixed_loss'}, {'train_label_disagreement', 'train_kl_ratio'}),
    (['--tl-mixup', '--mix-fraction', '0.5', '--mix-pairing', 'random'], {'train_label_disagreement'},
     {'train_picked_share'}),
    (['--cutout', '--pick', 't_ent', '--pick-candidates', '3', '--pick-ratio', '0.25'], {'train_picked_share'},
     {'train_kl_ratio'}),
    ([], {'train_kd_loss'}, {'train_label_disagreement'}),  # plain KD
])
def test_view_modes_reach_the_mixer(tmp_path, train_kd, teacher_ckpt, views, columns, absent):
    res = train_kd.main(BASE + ['--teacher', 'resnet8', '--teacher-checkpoint', teacher_ckpt, *views, '--epochs', '1',
                                '--train-num-samples', '32', '--output', str(tmp_path), '--experiment', 'v'])
    row = _rows(tmp_path / 'v')[0]
    assert columns <= row.keys() and not absent & row.keys()
    if '--pick' in views:
        assert float(row['train_picked_share']) == 0.25  # 12 of 3 x 16 candidates
    if views:
        assert float(row['train_mixed_loss']) > 0
    else:
        assert float(row['train_mixed_loss']) == 0 and res['recipe']['pick'] == 'none'


def test_args_yaml_replays_as_config(tmp_path, train_kd):
    res = train_kd.main(BASE + ['--epochs', '1', '--train-num-samples', '16', '--output', str(tmp_path),
                                '--experiment', 'r'])
    args, _ = parse_args(['--config', str(Path(res['run_dir']) / 'args.yaml')])
    assert (args.model, args.lr, args.epochs, args.resume, args.experiment) == ('resnet8', 0.05, 1, '', 'r')


def test_console_script_runs_the_same_main_as_the_script(train_kd, capsys):
    """pyproject's `timm-kd-train` entry point and train_kd.py are one command (timm_kd.train.main)."""
    import importlib
    import tomllib
    target = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['scripts']['timm-kd-train']
    module, func = target.split(':')
    assert importlib.import_module(module).main is train_kd.main
    with pytest.raises(SystemExit) as e:
        getattr(importlib.import_module(module), func)(['--model', 'no_such_net'])
    assert e.value.code == 2 and 'Unknown model' in capsys.readouterr().err


def test_a_distiller_with_state_trains_with_the_student_and_resumes_exactly(tmp_path, train_kd, teacher_ckpt,
                                                                             monkeypatch):
    """Contract: the optimizer covers task.distiller's parameters; its parameters and buffers are in the checkpoint
    (`distiller`) and come back exactly on resume. A toy method: KD scaled by a trainable factor, counting calls."""
    from timm_kd.distill.methods import METHODS
    from timm_kd.distill.methods.kd import KD

    class ScaledKD(KD):
        method_name = 'scaled_kd_test'

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scale = torch.nn.Parameter(torch.ones(()))
            self.register_buffer('calls', torch.zeros((), dtype=torch.long))

        def logit_loss(self, student_logits, teacher_logits, target):
            self.calls += 1
            return self.scale * super().logit_loss(student_logits, teacher_logits, target)

    monkeypatch.setitem(METHODS, ScaledKD.method_name, ScaledKD)
    common = BASE + ['--teacher', 'resnet8', '--teacher-checkpoint', teacher_ckpt, '--distill', ScaledKD.method_name,
                     '--epochs', '2', '--checkpoint-every', '4', '--output', str(tmp_path)]
    train_kd.main(common + ['--experiment', 'ref'])
    last = _state(tmp_path / 'ref' / 'last.pth.tar')
    assert int(last['distiller']['calls']) == 12 and float(last['distiller']['scale']) != 1.0  # 2 x 6 steps, trained
    n_params = sum(len(g['params']) for g in last['optimizer']['param_groups'])
    assert n_params == len(list(timm.create_model('resnet8').parameters())) + 1
    src = tmp_path / 'src'
    src.mkdir()
    shutil.copy(tmp_path / 'ref' / 'recovery.pth.tar', src / 'recovery.pth.tar')
    assert int(_state(src / 'recovery.pth.tar')['distiller']['calls']) == 10  # epoch 1, step 4
    train_kd.main(common + ['--resume', str(src / 'recovery.pth.tar'), '--experiment', 'resumed'])
    resumed = _state(tmp_path / 'resumed' / 'last.pth.tar')
    assert all(torch.equal(resumed['distiller'][k], v) for k, v in last['distiller'].items())
    _assert_same_weights(tmp_path / 'ref' / 'last.pth.tar', tmp_path / 'resumed' / 'last.pth.tar')


def test_loop_passes_loader_extras_to_the_task():
    """Contract: batches (x, y) or (x, y, extras); extras tensors go to the device and into task(x, y, **extras)."""
    from contextlib import nullcontext
    from types import SimpleNamespace
    from timm_kd.train.loop import EpochMeters, train_one_epoch
    seen = []

    class Task(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(4, 3)

        def get_trainable_module(self):
            return self.head

        def update_ema(self, step):
            pass

        def forward(self, x, y, **extras):
            seen.append({k: (type(v).__name__, v.shape) for k, v in extras.items()})
            out = self.head(x)
            return {'loss': torch.nn.functional.cross_entropy(out, y), 'output': out}

    task = Task()
    extras = {'index': torch.tensor([3, 4]), 'view_input': torch.randn(2, 4)}
    batches = [(torch.randn(2, 4), torch.tensor([0, 1]), extras), (torch.randn(2, 4), torch.tensor([2, 0]))]
    acc = SimpleNamespace(device=torch.device('cpu'), autocast=nullcontext, backward=lambda loss: loss.backward(),
                          num_processes=1, is_main_process=True)
    args = SimpleNamespace(channels_last=False, clip_grad=None, log_interval=10, checkpoint_every=0)
    n = train_one_epoch(0, task, batches, torch.optim.SGD(task.parameters(), lr=0.1), acc, args, EpochMeters())
    assert n == 2 and seen == [{'index': ('Tensor', (2,)), 'view_input': ('Tensor', (2, 4))}, {}]
