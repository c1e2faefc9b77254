"""Run folders and models for the Hub tests: a train_kd.py run folder with real tiny checkpoints, RepDistiller
teacher files, and a digest of a folder tree (to prove that nothing in it changed)."""
import hashlib
import json
from pathlib import Path

import timm
import torch
import yaml

TOKEN = 'hf_kdtest_SECRET_0123456789'  # must never show up in a file, a card or the output


def random_model(arch: str = 'resnet8', seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = timm.create_model(arch, **kwargs)
    with torch.no_grad():  # non-trivial BN statistics, so buffers are checked too
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def rd_checkpoint(path: Path, arch: str = 'resnet8', seed: int = 0, acc: float = 71.25, epoch: int = 240):
    """A RepDistiller teacher file: {'epoch', 'model', 'accuracy' (0-d tensor), 'optimizer'}."""
    m = random_model(arch, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'epoch': epoch, 'model': m.state_dict(), 'accuracy': torch.tensor(acc),
                'optimizer': {'state': {}, 'param_groups': []}}, path)
    return m


def fake_run(run: Path) -> dict:
    """A train_kd.py output folder (contract layout) holding tiny real resnet8 checkpoints."""
    run.mkdir(parents=True)
    args = {'model': 'resnet8', 'teacher': 'resnet32x4', 'teacher_checkpoint': str(run.parent / 'rd' / 'resnet32x4.pth'),
            'dataset': 'torch/cifar100', 'data_dir': str(run.parent / 'data'), 'push_to_hub': 'kduser/again',
            'num_classes': 100, 'tl_cutmix': True, 'pick': 'kld', 'kd_temperature': 4.0, 'epochs': 4, 'lr': 0.05,
            'batch_size': 64, 'hub_token': TOKEN}  # a secret that slipped into the args must not be republished
    models = {}
    for name, seed, epoch, top1 in (('model_best.pth.tar', 1, 3, 55.5), ('last.pth.tar', 2, 4, 54.25)):
        models[name] = random_model('resnet8', seed)
        torch.save({'arch': 'resnet8', 'args': args, 'epoch': epoch, 'metric': top1,
                    'state_dict': models[name].state_dict(), 'optimizer': {'state': {}, 'param_groups': []}}, run / name)
    (run / 'args.yaml').write_text(yaml.safe_dump(args))
    (run / 'summary.csv').write_text('epoch,train_loss,eval_loss,eval_top1,eval_top5\n' + ''.join(
        f'{e},{4.5 - e * 0.3:.4f},{4.0 - e * 0.2:.4f},{40 + e * 4.1:.3f},{70 + e * 2.2:.3f}\n' for e in range(5)))
    results = {'model': 'resnet8', 'teacher': 'resnet32x4', 'teacher_top1': 79.42, 'best_top1': 55.5,
               'best_top5': 80.125, 'best_epoch': 3, 'last_top1': 54.25, 'last_top5': 79.875, 'num_classes': 100,
               'dataset': 'torch/cifar100', 'recipe': {'mode': 'tl_cutmix', 'pick': 'kld', 'temperature': 4.0},
               'data_config': {'input_size': [3, 32, 32], 'mean': [0.5, 0.5, 0.5], 'std': [0.25, 0.25, 0.25],
                               'crop_pct': 1.0, 'interpolation': 'bilinear', 'num_classes': 100},
               'run_dir': str(run), 'teacher_checkpoint': args['teacher_checkpoint']}
    (run / 'results.json').write_text(json.dumps(results))
    return models


def tree_digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}
