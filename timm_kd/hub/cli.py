"""Console entry points ``timm-kd-publish`` and ``timm-kd-convert`` (``hfhub/*.py`` call the same mains).

Exit codes: 0 done; 1 the Hub upload (or, for convert, some of the files) failed and nothing local was
lost; 2 a usage error, reported in one sentence before any long work or network request.
"""
import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from timm_kd.models import TEACHER_SOURCES, list_teachers, store_dir
from .archive import ARCHIVE_SUFFIXES
from .convert import TEACHER_DATASETS, convert_teacher, find_teacher_checkpoints
from .cards import card_header
from .download import DownloadError, fetch_source
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

--download SOURCE fetches a released teacher archive ({', '.join(TEACHER_SOURCES)}), checks its sha256
and converts it into the local teacher store ({{store}}), where registered
names find the teachers when their Hub repo has none: train_kd.py --teacher resnet32x4 then just works.

examples:
  timm-kd-convert --download mdistiller                          # the benchmark teachers, by name
  timm-kd-convert --list                                         # what the local store holds
  timm-kd-convert cifar_teachers.tar --out hub_teachers          # an archive you already have
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
    ap = _parser('timm-kd-convert', _CONVERT_DOC.replace('{store}', str(store_dir())))
    ap.add_argument('sources', nargs='*', metavar='SRC',
                    help='checkpoint file(s), a folder of <arch>_vanilla/ckpt_epoch_N.pth, or an archive '
                         '(cifar_teachers.tar, teachers_cifar100.zip)')
    ap.add_argument('--download', choices=list(TEACHER_SOURCES), metavar='SOURCE',
                    help=f'download a released teacher archive ({", ".join(TEACHER_SOURCES)}) and convert it into '
                         f'the local teacher store')
    ap.add_argument('--url', default=None, help='with --download: fetch the archive from this mirror instead '
                                                '(it must match the same sha256)')
    ap.add_argument('--list', action='store_true', help='list the teachers in the local store and exit')
    ap.add_argument('--out', default=None,
                    help='output folder (default: the local teacher store with --download, else hub_teachers)')
    ap.add_argument('--arch', default=None,
                    help='architecture (RepDistiller or timm_kd name) when the path does not say it; one source only')
    ap.add_argument('--org', default=None, help='Hub organisation (default: $TIMM_KD_HUB_ORG or timm-kd)')
    ap.add_argument('--tag', default=None, help='repo suffix after the arch (default: the dataset, e.g. cifar100)')
    ap.add_argument('--dataset', default=None, choices=list(TEACHER_DATASETS),
                    help='what the teacher was trained on (sets the tag, card and preprocessing; default: cifar100, '
                         'or what the --download source says)')
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
    if args.list or bool(args.sources) == bool(args.download) or (args.url and not args.download):
        return _list_or_usage(args)
    provenance = None
    if args.download:
        try:
            archive, provenance = _fetch(args.download, args.url, args.timeout)
        except DownloadError as e:
            print(f'timm-kd-convert: error: {e}', file=sys.stderr)
            return 1
        args.sources = [str(archive)]
    out = args.out or (store_dir() if args.download else 'hub_teachers')
    dataset = args.dataset or (TEACHER_SOURCES[args.download].dataset if args.download else 'cifar100')
    failed = 0
    push = args.push and not args.dry_run
    push_broken = False
    # a downloaded archive is unpacked beside itself, in the Hugging Face cache, not in a small /tmp
    unpack_dir = Path(args.sources[0]).parent if args.download else None
    with tempfile.TemporaryDirectory(prefix='timm_kd_convert_', dir=unpack_dir) as tmp:
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
            try:
                res = convert_teacher(
                    path, out, arch=args.arch or arch, org=args.org, tag=args.tag, dataset=dataset,
                    num_classes=args.num_classes, accuracy=args.accuracy, source=label, license=args.license,
                    origin=_origin(label), verify=args.verify, provenance=provenance)
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
    if args.download and not failed:
        where = ('the local teacher store, where registered names are looked up (e.g. train_kd.py --teacher '
                 'resnet32x4; timm-kd-convert --list shows the store)' if args.out is None else
                 f'{out}, which registered names do not search: use --teacher local-dir:{out}/<arch>.<tag>')
        print(f"{len(found)} teacher{'s' if len(found) > 1 else ''} of {args.download} now in {where}.")
    return 1 if failed else 0


def _origin(label: str) -> str:
    """Who released a checkpoint, for its card: the catalogue's words for a known archive."""
    archive = label.split(':', 1)[0]
    if not archive.endswith(ARCHIVE_SUFFIXES):
        return 'RepDistiller / CRD teacher zoo'
    known = [s.origin for s in TEACHER_SOURCES.values() if s.filename == archive.rsplit('/', 1)[-1]]
    return known[0] if known else f'{archive} (RepDistiller / CRD teachers)'


def _fetch(name: str, url: Optional[str], timeout: float):
    """--download: the checked archive of a teacher source and the provenance its teachers' records keep."""
    archive, digest, first = fetch_source(name, url=url, timeout=timeout)
    trust = ('no digest is published, so it is recorded now and later downloads must match it' if first else
             'it matches the ' + ('published digest' if TEACHER_SOURCES[name].sha256 else 'digest recorded at the '
                                                                                      'first download'))
    print(f'{archive}: sha256 {digest} ({trust}).')
    provenance: Dict[str, Any] = {'download_source': name, 'archive_url': url or TEACHER_SOURCES[name].url,
                                  'archive_sha256': digest}
    return archive, provenance


def _list_or_usage(args: argparse.Namespace) -> int:
    """--list, or the usage error of a command that names no (or two kinds of) sources."""
    if not args.list or args.sources or args.download:
        what = ('--list takes no other source' if args.list else '--url is a mirror for --download'
                if args.url and not args.download else 'give checkpoint sources or --download SOURCE (one of the two)')
        print(f'timm-kd-convert: error: {what}; see timm-kd-convert --help.', file=sys.stderr)
        return 2
    rows = list_teachers()
    if not rows:
        print(f'The local teacher store ({store_dir()}) is empty; fill it with: timm-kd-convert --download '
              f'{next(iter(TEACHER_SOURCES))}')
        return 0
    print(f'Teachers in the local store {store_dir()}:')
    width = max(len(r['name']) for r in rows)
    for r in rows:
        top1 = f"{r['reported_top1']:.2f}" if isinstance(r['reported_top1'], (int, float)) else 'n/a'
        print(f"  {r['name']:<{width}}  top-1 {top1:>6}  {r['num_classes']} classes  from {r['source']}"
              + (f" ({r['origin']})" if r.get('origin') else ''))
    for origin, digest in sorted({(r['origin'], r['archive_sha256']) for r in rows if r['archive_sha256']}):
        print(f'archive sha256 {digest}: {origin}')
    return 0
