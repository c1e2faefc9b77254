"""Students out: a ``train_kd.py`` run folder -> a timm Hub folder (and an upload of it).

The folder holds ``config.json`` + ``model.safetensors`` (what ``timm.create_model('hf-hub:...')`` reads),
the model card and the run's records under ``training/`` (cleaned of local paths and secrets).
"""
import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import timm
import yaml

from timm_kd.models import load_kd_checkpoint, read_kd_checkpoint
from timm_kd.utils.files import FileReadError, open_regular, read_json, read_text, read_yaml
from timm_kd.utils.messages import public_record, public_text
from .cards import identify_dataset, student_card
from .io import check_repo_id, push_folder, save_model_folder, sha256_file, timm_kd_version

__all__ = ['RunFolderError', 'read_run', 'export_student', 'publish_student']

_logger = logging.getLogger(__name__)

# where a run wrote / pushed / read its files: local or one-off, not recipe (and a reproduction from the
# published args must not push to this repo again)
_LOCAL_ARGS = ('push_to_hub', 'hub_private', 'resume', 'config', 'output', 'experiment', 'data_dir')
# results.json entries that stay local: where the run folder is and how a push went
_LOCAL_RESULTS = ('run_dir', 'hub_url', 'hub_error')


class RunFolderError(FileReadError):
    """A run folder (or one of its records) that cannot be published; the message says which file and why."""


def _clean_args(args: Dict[str, Any]) -> Dict[str, Any]:
    """Training args fit for a public card: no run-local flags, plain YAML types, through the one secret and path
    filter (:func:`public_record`)."""
    out = {str(k): (list(v) if isinstance(v, tuple) else v if isinstance(v, (str, int, float, bool, type(None), list,
                                                                           dict)) else str(v))
           for k, v in (args or {}).items() if k not in _LOCAL_ARGS}
    return public_record(out)


def read_run(run_dir: Union[str, os.PathLike]) -> Tuple[Dict[str, Any], Dict[str, Any], List[Dict[str, str]]]:
    """(results.json, args.yaml, summary.csv rows) of a train_kd.py run folder; missing files give empties.

    Every record is read as a regular file only, never through a link, within size and depth limits (only
    plain YAML: tags that would construct Python objects are refused). Raises ``FileReadError`` (or its
    :class:`RunFolderError`) for a record that is unreadable or not what train_kd.py writes.
    """
    run_dir = Path(run_dir)
    results = read_json(str(run_dir / 'results.json'), default=None) or {}
    args = read_yaml(str(run_dir / 'args.yaml'), default=None) or {}
    for name, value in (('results.json', results), ('args.yaml', args)):
        if not isinstance(value, dict):
            raise RunFolderError(f'Cannot read {run_dir / name}: expected a dict of records, found a '
                                 f'{type(value).__name__}; fix or remove that file and publish again.')
    try:
        rows = list(csv.DictReader(read_text(str(run_dir / 'summary.csv'), default='').splitlines()))
    except csv.Error as e:
        raise RunFolderError(f'Cannot read {run_dir / "summary.csv"}: {e}; fix or remove that file and publish '
                             f'again.') from e
    return results, args, rows


def _csv_text(rows: List[Dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), restval='', extrasaction='ignore', lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def export_student(
        run_dir: Union[str, os.PathLike],
        repo_id: str,
        which: str = 'best',
        out_dir: Optional[Union[str, os.PathLike]] = None,
        dataset_name: Optional[str] = None,
        dataset_id: Optional[str] = None,
) -> Path:
    """Write the Hub folder of a trained student (no network). Default destination: ``<run_dir>/hub/<name>``.

    ``dataset_name`` / ``dataset_id`` name the training data on the card when the run did not record them
    (or correct what it recorded). ``out_dir`` must be new, empty or an earlier export; it is never the run
    folder. Raises ``FileNotFoundError`` / ``ValueError`` (:class:`RunFolderError`) / ``FileExistsError``
    before anything is written.
    """
    run_dir = Path(run_dir)
    check_repo_id(repo_id)
    if dataset_id is not None:
        check_repo_id(dataset_id, what='--dataset-id', owner=False)
    if which not in ('best', 'last'):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    if not run_dir.is_dir():
        raise FileNotFoundError(f'Run folder {run_dir} does not exist.')
    ckpt = run_dir / ('model_best.pth.tar' if which == 'best' else 'last.pth.tar')
    if not os.path.lexists(ckpt):
        raise FileNotFoundError(
            f'{ckpt} not found: the run folder has no {which} checkpoint'
            + (" (try --which last)" if which == 'best' and (run_dir / 'last.pth.tar').is_file() else '') + '.')
    open_regular(str(ckpt)).close()  # a link or a FIFO in its place is refused, never read
    results, args, rows = read_run(run_dir)
    state_dict, meta = read_kd_checkpoint(ckpt)
    # from here on only what may be published: no run-local entries, through the one secret and path filter
    args = _clean_args(args or (meta.get('args') if isinstance(meta.get('args'), dict) else {}))
    results = public_record({k: v for k, v in results.items() if k not in _LOCAL_RESULTS})
    rows = [public_record({k: v for k, v in r.items() if k is not None}) for r in rows]  # None: cells past the header
    dataset_name = public_text(dataset_name) if dataset_name else dataset_name
    ema = bool(args.get('model_ema'))
    if ema:  # with --model-ema, train_kd.py reports (and picks the best epoch by) the EMA weights: publish those
        try:
            state_dict, _ = read_kd_checkpoint(ckpt, entry='state_dict_ema')
        except ValueError:
            _logger.warning(f'{ckpt} has no state_dict_ema although the run used --model-ema: publishing the raw '
                            f'weights.')
            ema = False
    arch = meta.get('arch') or results.get('model') or args.get('model')
    if not arch:
        raise RunFolderError(f'Cannot tell the architecture of {ckpt}: no arch in the checkpoint, results.json or '
                             f'args.yaml.')
    results['model'] = results.get('model') or arch
    num_classes = results.get('num_classes') or args.get('num_classes')
    kwargs = {k: args[k] for k in ('in_chans',) if args.get(k) is not None}
    model = timm.create_model(arch, pretrained=False, **({'num_classes': num_classes} if num_classes else {}), **kwargs)
    load_kd_checkpoint(model, state_dict, strict=True)
    model.eval()

    # the preprocessing the student was trained with: train_kd.py records it in results.json (data_config);
    # older runs only have the args, where None means the model's default
    trained = results.get('data_config') or meta.get('data_config') or args
    data_config = {k: trained[k] for k in ('input_size', 'img_size', 'mean', 'std', 'interpolation', 'crop_pct')
                   if isinstance(trained, dict) and trained.get(k) is not None}
    epoch = meta.get('epoch')
    epoch = results.get('best_epoch') if which == 'best' and results.get('best_epoch') is not None else epoch
    dataset = identify_dataset(results, args, name=dataset_name, dataset_id=dataset_id)
    readme = student_card(model, repo_id, results=results, args=args, which=which, epoch=epoch, summary_rows=rows,
                          ema=ema, dataset=dataset)
    name = repo_id.split('/')[-1]
    cfg_overrides = {'tag': name.split('.', 1)[1]} if '.' in name else {}
    lineage = {
        'kind': 'student', 'repo_id': repo_id, 'weights': which + (' (EMA)' if ema else ''), 'epoch': epoch,
        'checkpoint': ckpt.name,
        'checkpoint_sha256': sha256_file(ckpt), 'teacher': results.get('teacher') or args.get('teacher'),
        'teacher_top1': results.get('teacher_top1'), 'dataset': results.get('dataset') or args.get('dataset'),
        'dataset_name': dataset.name, 'dataset_id': dataset.hub_id,
        'results': {k: results.get(k) for k in ('best_top1', 'best_top5', 'best_epoch', 'last_top1', 'last_top5')},
        'recipe': results.get('recipe') or {}, 'timm_kd_version': timm_kd_version(),
    }
    # the cleaned records, not the files: a secret or a local path that slipped into them is never republished
    extra: Dict[str, Union[str, bytes]] = {'training/results.json': json.dumps(results, indent=2, default=str)}
    if args:
        extra['training/args.yaml'] = yaml.safe_dump(args, sort_keys=True)
    if rows:
        extra['training/summary.csv'] = _csv_text(rows)
    if out_dir is None and (run_dir / 'hub').is_symlink():  # the default place must stay inside the run folder
        raise RunFolderError(f'{run_dir / "hub"} is a symbolic link; timm-kd never writes into a run folder through a '
                             f'link (remove it, or pass --out).')
    folder = Path(out_dir) if out_dir is not None else run_dir / 'hub' / name
    return save_model_folder(model, folder, readme, model_config={'pretrained_cfg': cfg_overrides, 'timm_kd': lineage},
                             data_config=data_config or None, extra_files=extra, protect=run_dir)


def publish_student(
        run_dir: Union[str, os.PathLike],
        repo_id: str,
        private: bool = False,
        dry_run: bool = False,
        token: Optional[str] = None,
        which: str = 'best',
        out_dir: Optional[Union[str, os.PathLike]] = None,
        dataset_name: Optional[str] = None,
        dataset_id: Optional[str] = None,
        timeout: Optional[float] = None,
) -> Union[str, Path]:
    """Publish a trained student from its ``train_kd.py`` output folder.

    Writes ``<run_dir>/hub/<repo name>/`` (config.json, model.safetensors, README.md model card,
    training/{args.yaml, summary.csv, results.json}) and, unless ``dry_run``, uploads it to ``repo_id``
    (created if missing, updated in place if it exists), each request waiting at most ``timeout`` seconds.

    Returns:
        The repo URL after an upload, or the local folder (a ``Path``) for a dry run.

    Raises:
        FileNotFoundError / ValueError / FileExistsError for a bad run folder, repo id or destination (before
        anything is written), HubPublishError when the upload fails (the local folder stays for a rerun).
    """
    folder = export_student(run_dir, repo_id, which=which, out_dir=out_dir, dataset_name=dataset_name,
                            dataset_id=dataset_id)
    if dry_run:
        _logger.info(f'Dry run: wrote {folder}, nothing uploaded.')
        return folder
    return push_folder(folder, repo_id, private=private, token=token, timeout=timeout,
                       commit_message=f'Upload {public_text(Path(run_dir).name)} ({which} weights) with timm-kd')
