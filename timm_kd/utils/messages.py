"""Text for users and for public records: one-line error reasons, references without private parts.

Used by the training script, the teacher loader and the Hub tools alike, so every message and every
published record is shortened and scrubbed the same way.
"""
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

__all__ = ['first_line', 'public_ref']


def first_line(err: BaseException) -> str:
    """The line of an exception message that explains it, without a trailing period.

    PyTorch's load errors start with a generic line and name the offending tensor further down, so a
    ``size mismatch`` line wins over the first one.
    """
    text = str(err).strip()
    for line in text.splitlines():
        if 'size mismatch' in line:
            return line.strip().rstrip('.')
    return (text.splitlines()[0] if text else type(err).__name__).rstrip('.')


def public_ref(ref: Optional[Any]) -> Optional[str]:
    """A weight reference fit for a public results.json / model card: Hub references as they are, URLs without
    credentials, query or fragment (where signed links carry tokens), local files and folders by name only."""
    if not ref:
        return None
    ref = str(ref)
    if ref.startswith(('hf-hub:', 'hf_hub:')):
        return ref
    if ref.startswith(('http://', 'https://')):
        u = urlsplit(ref)
        return urlunsplit((u.scheme, (u.hostname or '') + (f':{u.port}' if u.port else ''), u.path, '', ''))
    prefix = 'local-dir:' if ref.startswith('local-dir:') else ''
    path = ref[len(prefix):].replace('\\', '/').rstrip('/')  # a Windows path read on another system too
    return prefix + (path.rsplit('/', 1)[-1] or ref[len(prefix):])
