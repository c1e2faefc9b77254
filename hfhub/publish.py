#!/usr/bin/env python3
"""Publish a student trained with train_kd.py to the Hugging Face Hub.

Reads a run folder (model_best.pth.tar / last.pth.tar, args.yaml, summary.csv, results.json), writes
``<run>/hub/<repo name>/`` with config.json, model.safetensors, a model card (teacher lineage, recipe,
best and last top-1/top-5, teacher accuracy, model-index metadata, usage) and the training files, then
uploads it as one commit. A repo that exists is updated, not duplicated.

Example:
    python hfhub/publish.py output/train/<run> --repo-id me/resnet8x4.tlcutmix_pick_cifar100
    python hfhub/publish.py output/train/<run> --repo-id me/x --which last --dry-run

The token comes from HF_TOKEN or a prior `hf auth login` (there is deliberately no --token flag: it would
end up in shell history and logs); it is never printed or written.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from timm_kd import hub  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('run_dir', help='train_kd.py output folder, e.g. output/train/<experiment>')
    ap.add_argument('--repo-id', required=True, help='Hub repo, e.g. me/resnet8x4.tlcutmix_pick_cifar100')
    ap.add_argument('--which', choices=['best', 'last'], default='best',
                    help='publish the best-epoch (default) or the last-epoch weights')
    ap.add_argument('--private', action='store_true', help='create the repo as private')
    ap.add_argument('--dry-run', action='store_true', help='write the folder, do not upload')
    ap.add_argument('--out', default=None, help='folder to write (default: <run_dir>/hub/<repo name>)')
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        res = hub.publish_student(args.run_dir, args.repo_id, private=args.private, dry_run=args.dry_run,
                                  which=args.which, out_dir=args.out)
    except hub.HubPublishError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except (OSError, ValueError, RuntimeError) as e:
        print(f'error: cannot publish {args.run_dir}: {e}', file=sys.stderr)
        return 2
    if args.dry_run:
        print(f'dry run: wrote {res} (nothing uploaded)')
    else:
        print(f'published {res}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
