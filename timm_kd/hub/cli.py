"""Console entry points ``timm-kd-publish`` and ``timm-kd-convert`` (``hfhub/*.py`` call the same mains).

Exit codes: 0 done; 1 the Hub upload (or, for convert, some of the files) failed and nothing local was
lost; 2 a usage error, reported in one sentence before any long work or network request.
"""
import argparse
import sys
import tempfile
from typing import List, Optional

from .convert import TEACHER_DATASETS, convert_teacher, find_teacher_checkpoints
from .cards import card_header
from .export import publish_student
from .io import DEFAULT_TIMEOUT, HubPublishError, check_repo_id, push_folder

__all__ = ['publish_main', 'convert_main']

_TOKEN_NOTE = ('The Hub token comes from HF_TOKEN or a prior `hf auth login` (there is deliberately no --token '
               'flag: it would end up in shell history and logs); it is never printed or written.')

_PUBLISH_DOC = f'''Publish a student trained with train_kd.py to the Hugging Face Hub.

Reads a run folder (model_best.pth.tar / last.pth.tar, args.yaml, summary.csv, results.json), writes
<run>/hub/<repo name>/ with config.json, model.safetensors, a model card (data set, teacher lineage,
recipe, best and last top-1/top-5, model-index metadata, usage) and the training records, then uploads
it as one commit. A repo that exists is updated, not duplicated.

examples:
  timm-kd-publish output/train/<run> --repo-id me/resnet8x4.tlcutmix_pick_cifar100
  timm-kd-publish output/train/<run> --repo-id me/x --dataset-name "My flowers" --dry-run

{_TOKEN_NOTE}'''

_CONVERT_DOC = f'''Convert KD teacher checkpoints (RepDistiller / CRD, mdistiller, Good-DA, timm) into timm Hub folders.

Each checkpoint becomes <out>/<arch>.<tag>/ with config.json, model.safetensors and a model card
(provenance, sha256 of the source file, reported accuracy), checked to reproduce the source logits.
With --push each folder is uploaded to <org>/<arch>.<tag>: exactly the repo a registered name
(timm.create_model('resnet32x4', pretrained=True), train_kd.py --teacher resnet32x4) resolves to
when TIMM_KD_HUB_ORG=<org>.

examples:
  timm-kd-convert cifar_teachers.tar --out hub_teachers          # the mdistiller archive
  timm-kd-convert save/models/ --org me --push                   # a RepDistiller save folder
  timm-kd-convert t.pth --arch resnet32x4 --accuracy 79.42

{_TOKEN_NOTE}'''


def _parser(prog: str, doc: str) -> argparse.ArgumentParser:
    head, _, rest = doc.partition('\n\n')
    return argparse.ArgumentParser(prog=prog, description=head, epilog=rest,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f'must be > 0, got {text}')
    return value


def _add_timeout(ap: argparse.ArgumentParser) -> None:
    ap.add_argument('--timeout', type=_positive, default=DEFAULT_TIMEOUT, metavar='SECONDS',
                    help='give up on a Hub request that stays silent this long (default: %(default)g)')


def publish_parser() -> argparse.ArgumentParser:
    ap = _parser('timm-kd-publish', _PUBLISH_DOC)
    ap.add_argument('run_dir', help='train_kd.py output folder, e.g. output/train/<experiment>')
    ap.add_argument('--repo-id', required=True, help='Hub repo "owner/name", e.g. me/resnet8x4.tlcutmix_pick_cifar100')
    ap.add_argument('--which', choices=['best', 'last'], default='best',
                    help='publish the best-epoch (default) or the last-epoch weights')
    ap.add_argument('--private', action='store_true', help='create the repo as private')
    ap.add_argument('--dry-run', action='store_true', help='write the folder and print the card header, do not upload')
    ap.add_argument('--out', default=None,
                    help='folder to write: new, empty or an earlier export (default: <run_dir>/hub/<repo name>)')
    ap.add_argument('--dataset-name', default=None, metavar='NAME',
                    help='name of the training data on the card (default: what the run recorded)')
    ap.add_argument('--dataset-id', default=None, metavar='ID',
                    help='Hub dataset id of the training data, e.g. me/flowers (default: what the run recorded)')
    _add_timeout(ap)
    return ap


def publish_main(argv: Optional[List[str]] = None) -> int:
    """``timm-kd-publish``: export a run folder and upload it; see ``timm-kd-publish --help``."""
    args = publish_parser().parse_args(argv)
    try:
        check_repo_id(args.repo_id)
        if args.dataset_id is not None:
            check_repo_id(args.dataset_id, what='--dataset-id', owner=False)
    except ValueError as e:
        print(f'timm-kd-publish: error: {e}', file=sys.stderr)
        return 2
    try:
        res = publish_student(args.run_dir, args.repo_id, private=args.private, dry_run=args.dry_run,
                              which=args.which, out_dir=args.out, dataset_name=args.dataset_name,
                              dataset_id=args.dataset_id, timeout=args.timeout)
    except HubPublishError as e:
        print(f'timm-kd-publish: error: {e}', file=sys.stderr)
        return 1
    except (OSError, ValueError, RuntimeError) as e:  # run folder, records, checkpoint, destination
        print(f'timm-kd-publish: error: cannot publish {args.run_dir}: {e}', file=sys.stderr)
        return 2
    if args.dry_run:
        header = card_header((res / 'README.md').read_text(encoding='utf-8'))
        print(f'dry run: wrote {res} (nothing uploaded). Card header:\n{header}')
    else:
        print(f'published {res}')
    return 0


def convert_parser() -> argparse.ArgumentParser:
    ap = _parser('timm-kd-convert', _CONVERT_DOC)
    ap.add_argument('sources', nargs='+', metavar='SRC',
                    help='checkpoint file(s), a folder of <arch>_vanilla/ckpt_epoch_N.pth, or cifar_teachers.tar')
    ap.add_argument('--out', default='hub_teachers', help='output folder (default: %(default)s)')
    ap.add_argument('--arch', default=None,
                    help='architecture (RepDistiller or timm_kd name) when the path does not say it; one source only')
    ap.add_argument('--org', default=None, help='Hub organisation (default: $TIMM_KD_HUB_ORG or timm-kd)')
    ap.add_argument('--tag', default=None, help='repo suffix after the arch (default: the dataset, e.g. cifar100)')
    ap.add_argument('--dataset', default='cifar100', choices=list(TEACHER_DATASETS),
                    help='what the teacher was trained on (sets the tag, card and preprocessing)')
    ap.add_argument('--num-classes', type=int, default=None, help='default: read from the checkpoint')
    ap.add_argument('--accuracy', type=float, default=None, help='reported top-1 (default: the checkpoint\'s own)')
    ap.add_argument('--license', default='other', help='license id for the card (default: %(default)s)')
    ap.add_argument('--push', action='store_true', help='upload each folder to <org>/<arch>.<tag>')
    ap.add_argument('--dry-run', action='store_true', help='write the folders only, never upload (overrides --push)')
    ap.add_argument('--private', action='store_true', help='create new repos as private')
    ap.add_argument('--no-verify', dest='verify', action='store_false',
                    help='skip reloading each folder to check it reproduces the source logits')
    _add_timeout(ap)
    return ap


def convert_main(argv: Optional[List[str]] = None) -> int:
    """``timm-kd-convert``: convert teacher checkpoints (and push them); see ``timm-kd-convert --help``."""
    args = convert_parser().parse_args(argv)
    failed = 0
    push = args.push and not args.dry_run
    push_broken = False
    with tempfile.TemporaryDirectory(prefix='timm_kd_convert_') as tmp:
        found = []
        for src in args.sources:
            try:
                found += find_teacher_checkpoints(src, tmp)
            except (OSError, ValueError) as e:
                print(f'timm-kd-convert: error: {src}: {e}', file=sys.stderr)
                failed += 1
        if args.arch and len(found) > 1:
            print(f'timm-kd-convert: error: --arch names one architecture but {len(found)} checkpoints were found; '
                  'convert them one by one.', file=sys.stderr)
            return 2
        for path, label, arch in found:
            origin = ('mdistiller cifar_teachers.tar (RepDistiller / CRD teachers)' if ':' in label
                      else 'RepDistiller / CRD teacher zoo')
            try:
                res = convert_teacher(
                    path, args.out, arch=args.arch or arch, org=args.org, tag=args.tag, dataset=args.dataset,
                    num_classes=args.num_classes, accuracy=args.accuracy, source=label, license=args.license,
                    origin=origin, verify=args.verify)
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
                print(f'timm-kd-convert: error: {label}: {e}', file=sys.stderr)
                failed += 1
                continue
            acc = f"{res['accuracy']:.2f}" if res['accuracy'] is not None else 'n/a'
            print(f"converted {label} -> {res['folder']}  ({res['repo_id']}, top-1 {acc})")
            if push and not push_broken:
                try:
                    url = push_folder(res['folder'], res['repo_id'], private=args.private, timeout=args.timeout,
                                      commit_message=f"Convert {res['original_arch']} teacher from {label}")
                    print(f'pushed {url}')
                except HubPublishError as e:
                    print(f'timm-kd-convert: error: {e}', file=sys.stderr)
                    failed += 1
                    push_broken = True  # the Hub is down or refusing: do not repeat the wait per teacher
    if not found:
        print('timm-kd-convert: error: no checkpoints found.', file=sys.stderr)
        return 2
    return 1 if failed else 0
