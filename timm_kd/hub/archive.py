"""Checkpoints out of an archive that nobody vouches for (``.tar`` in any compression, ``.zip``).

Only regular members whose names end in a checkpoint suffix are read; links, devices, folders and macOS
resource forks (``__MACOSX/``, ``._*``) are skipped. Each chosen member is copied, never extracted, into a
file this module names (``NNN_<safe name>``) inside the destination folder, so no member name can place a
file anywhere else. Member counts and sizes are bounded, and a member is copied only up to its declared
size plus nothing: a stream that runs longer (a lying header, a decompression bomb) is an error.
"""
import re
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple, Union

__all__ = ['CHECKPOINT_SUFFIXES', 'ARCHIVE_SUFFIXES', 'MAX_MEMBER_BYTES', 'is_archive', 'extract_checkpoints']

CHECKPOINT_SUFFIXES = ('.pth', '.pt')
ARCHIVE_SUFFIXES = ('.tar', '.tar.gz', '.tgz', '.tar.bz2', '.tar.xz', '.zip')
#: no KD teacher checkpoint comes near this (a ResNet-50 with its optimizer state is ~0.2 GB)
MAX_MEMBER_BYTES = 2 << 30
#: members looked at before the archive is refused as not a teacher archive
MAX_MEMBERS = 100_000
_CHUNK = 1 << 20


def is_archive(path: Union[str, Path]) -> bool:
    """A tar (plain or compressed) or zip archive by name and content. The name counts because a checkpoint can be
    either: torch.save writes zip files (also without a suffix, e.g. mdistiller's ``student_best``) and timm
    names its checkpoints ``.pth.tar``."""
    path = Path(path)
    name = path.name.lower()
    if not path.is_file() or name.endswith('.pth.tar') or not name.endswith(ARCHIVE_SUFFIXES):
        return False
    return zipfile.is_zipfile(path) if name.endswith('.zip') else tarfile.is_tarfile(path)


def _wanted(name: str) -> bool:
    parts = PurePosixPath(name.replace('\\', '/')).parts
    return (bool(parts) and name.endswith(CHECKPOINT_SUFFIXES) and '__MACOSX' not in parts
            and not parts[-1].startswith('._'))


def _tar_members(tf: tarfile.TarFile) -> Iterator[Tuple[str, int, Callable[[], BinaryIO]]]:
    for i, m in enumerate(tf):
        if i >= MAX_MEMBERS:
            raise ValueError(f'more than {MAX_MEMBERS} members: not a teacher archive')
        if m.isfile() and _wanted(m.name):  # isfile: regular files only (no links, devices, fifos)
            yield m.name, m.size, lambda m=m: tf.extractfile(m)


def _zip_members(zf: zipfile.ZipFile) -> Iterator[Tuple[str, int, Callable[[], BinaryIO]]]:
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ValueError(f'more than {MAX_MEMBERS} members: not a teacher archive')
    for info in infos:
        kind = stat.S_IFMT(info.external_attr >> 16)  # the unix file type; 0 when the archiver recorded none
        regular = not info.is_dir() and kind in (0, stat.S_IFREG)
        if regular and _wanted(info.filename):
            yield info.filename, info.file_size, lambda info=info: zf.open(info)


def _copy_bounded(fin: BinaryIO, dst: Path, size: int) -> None:
    copied = 0
    with open(dst, 'xb') as fout:  # 'x': the name is ours and new; never write through something planted
        for block in iter(lambda: fin.read(_CHUNK), b''):
            copied += len(block)
            if copied > size:
                raise ValueError(f'{dst.name}: the member holds more data than its declared {size} bytes')
            fout.write(block)
    if copied != size:
        raise ValueError(f'{dst.name}: the member ends after {copied} of its declared {size} bytes')


def extract_checkpoints(
        archive: Union[str, Path],
        dest: Union[str, Path],
        select: Optional[Callable[[List[str]], List[str]]] = None,
) -> List[Tuple[Path, str]]:
    """Copy the checkpoint members of ``archive`` into ``dest`` (an existing folder); returns ``[(file, member name)]``.

    ``select`` picks among the checkpoint member names (e.g. only the last epoch of each folder). Raises
    ``ValueError`` for an archive that holds no checkpoint or breaks a bound.
    """
    archive, dest = Path(archive), Path(dest)
    zipped = archive.name.lower().endswith('.zip')
    with (zipfile.ZipFile(archive) if zipped else tarfile.open(archive)) as af:
        members: Dict[str, Tuple[int, Callable[[], BinaryIO]]] = {}
        for name, size, opener in (_zip_members(af) if zipped else _tar_members(af)):
            if size > MAX_MEMBER_BYTES:
                raise ValueError(f'{name} declares {size} bytes, more than any teacher checkpoint '
                                 f'({MAX_MEMBER_BYTES} at most)')
            members[name] = (size, opener)
        names = sorted(members)
        chosen = select(names) if select is not None else names
        if not chosen:
            raise ValueError(f'{archive.name} holds no {" / ".join(CHECKPOINT_SUFFIXES)} checkpoints')
        out = []
        for i, name in enumerate(chosen):
            safe = re.sub(r'[^A-Za-z0-9._-]', '_', PurePosixPath(name.replace('\\', '/')).name)
            dst = dest / f'{i:03d}_{safe}'
            size, opener = members[name]
            with opener() as fin:
                _copy_bounded(fin, dst, size)
            out.append((dst, name))
    return out
