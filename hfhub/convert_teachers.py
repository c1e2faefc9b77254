#!/usr/bin/env python3
"""Convert KD teacher checkpoints (RepDistiller / CRD, mdistiller, Good-DA, timm) into timm Hub folders.

Each checkpoint becomes ``<out>/<arch>.<tag>/`` with config.json, model.safetensors and a model card
(provenance, sha256 of the source file, reported accuracy), checked to reproduce the source logits.
With ``--push`` each folder is uploaded to ``<org>/<arch>.<tag>``: exactly the repo a registered name
(``timm.create_model('resnet32x4', pretrained=True)``, ``train_kd.py --teacher resnet32x4``) resolves to
when ``TIMM_KD_HUB_ORG=<org>``.

Examples:
    python hfhub/convert_teachers.py cifar_teachers.tar --out hub_teachers            # the mdistiller archive
    python hfhub/convert_teachers.py save/models/ --org me --push                      # RepDistiller save dir
    python hfhub/convert_teachers.py t.pth --arch resnet32x4 --accuracy 79.42 --dry-run

The Hub token comes from HF_TOKEN or a prior `hf auth login`; it is never printed or written.
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from timm_kd import hub  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('sources', nargs='+', metavar='SRC',
                    help='checkpoint file(s), a folder of <arch>_vanilla/ckpt_epoch_N.pth, or cifar_teachers.tar')
    ap.add_argument('--out', default='hub_teachers', help='output folder (default: %(default)s)')
    ap.add_argument('--arch', default=None,
                    help='architecture (RepDistiller or timm_kd name) when the path does not say it; one source only')
    ap.add_argument('--org', default=None, help='Hub organisation (default: $TIMM_KD_HUB_ORG or timm-kd)')
    ap.add_argument('--tag', default=None, help='repo suffix after the arch (default: the dataset, e.g. cifar100)')
    ap.add_argument('--dataset', default='cifar100', choices=['cifar100', 'cifar10', 'tinyimagenet'],
                    help='what the teacher was trained on (sets the tag, card and preprocessing)')
    ap.add_argument('--num-classes', type=int, default=None, help='default: read from the checkpoint')
    ap.add_argument('--accuracy', type=float, default=None, help='reported top-1 (default: the checkpoint\'s own)')
    ap.add_argument('--license', default='other', help='license id for the card (default: %(default)s)')
    ap.add_argument('--push', action='store_true', help='upload each folder to <org>/<arch>.<tag>')
    ap.add_argument('--dry-run', action='store_true', help='write the folders only, never upload (overrides --push)')
    ap.add_argument('--private', action='store_true', help='create new repos as private')
    ap.add_argument('--no-verify', dest='verify', action='store_false',
                    help='skip reloading each folder to check it reproduces the source logits')
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    failed = 0
    push = args.push and not args.dry_run
    push_broken = False
    with tempfile.TemporaryDirectory(prefix='timm_kd_convert_') as tmp:
        found = []
        for src in args.sources:
            try:
                found += hub.find_teacher_checkpoints(src, tmp)
            except (OSError, ValueError) as e:
                print(f'error: {src}: {e}', file=sys.stderr)
                failed += 1
        if args.arch and len(found) > 1:
            print(f'error: --arch names one architecture but {len(found)} checkpoints were found; '
                  'convert them one by one.', file=sys.stderr)
            return 2
        for path, label, arch in found:
            origin = ('mdistiller cifar_teachers.tar (RepDistiller / CRD teachers)' if ':' in label
                      else 'RepDistiller / CRD teacher zoo')
            try:
                res = hub.convert_teacher(
                    path, args.out, arch=args.arch or arch, org=args.org, tag=args.tag, dataset=args.dataset,
                    num_classes=args.num_classes, accuracy=args.accuracy, source=label, license=args.license,
                    origin=origin, verify=args.verify)
            except Exception as e:  # one bad file must not stop the others
                print(f'error: {label}: {e}', file=sys.stderr)
                failed += 1
                continue
            acc = f"{res['accuracy']:.2f}" if res['accuracy'] is not None else 'n/a'
            print(f"converted {label} -> {res['folder']}  ({res['repo_id']}, top-1 {acc})")
            if push and not push_broken:
                try:
                    url = hub.push_folder(res['folder'], res['repo_id'], private=args.private,
                                          commit_message=f"Convert {res['original_arch']} teacher from {label}")
                    print(f'pushed {url}')
                except hub.HubPublishError as e:
                    print(f'error: {e}', file=sys.stderr)
                    failed += 1
                    push_broken = True  # the Hub is down or refusing: do not repeat the wait per teacher
    if not found:
        print('error: no checkpoints found.', file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
