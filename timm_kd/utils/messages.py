"""Text for users and for public records: one-line error reasons, references and records without private parts.

Used by the training script, the teacher loader and the Hub tools alike, so every message and every
published record is shortened and scrubbed the same way: :func:`public_record` is the one secret filter and
the one path filter of everything timm-kd publishes.
"""
import re
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

__all__ = ['first_line', 'public_ref', 'public_text', 'public_record', 'is_secret_key', 'SECRET_KEY_WORDS',
           'PATH_KEYS', 'REDACTED']

#: a key holds a secret when its lower-case form (``-`` read as ``_``) contains one of these
SECRET_KEY_WORDS = ('token', 'secret', 'password', 'passwd', 'passphrase', 'credential', 'api_key', 'apikey',
                    'private_key', 'access_key', 'auth', 'cookie')
#: keys whose string values are local files or folders (train_kd's path flags), and the endings of such keys
PATH_KEYS = ('config', 'resume', 'output', 'data_dir', 'class_map', 'initial_checkpoint', 'teacher_checkpoint',
             'teacher_source', 'student_checkpoint', 'checkpoint')
_PATH_KEY_ENDINGS = ('_checkpoint', '_dir', '_path', '_file', '_map')
#: what a secret inside a published value is replaced by
REDACTED = '<redacted>'
_TOKENS = re.compile('|'.join((
    r'(?<![A-Za-z0-9])(?:hf|api_org)_[A-Za-z0-9_]{16,}',  # Hugging Face user and organisation tokens
    r'(?<![A-Za-z0-9])(?:gh[pousr]_|github_pat_)[A-Za-z0-9_]{20,}',  # GitHub
    r'(?<![A-Za-z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Z])',  # AWS access key ids
    r'(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{20,}',  # "sk-" API keys
    r'(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,}',  # Slack
    r'eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}',  # JSON web tokens
    r'-----BEGIN [A-Z ]*PRIVATE KEY-----(?:.*?-----END [A-Z ]*PRIVATE KEY-----)?',
)), re.S)
# name=value / name: value where the name says secret (query strings, "HF_TOKEN=...", "password: ...")
_NAMED_SECRET = re.compile(r'(?i)(\b(?:\w*_)?(?:token|secret|password|passwd|api[_-]?key|access[_-]?key|signature|sig|'
                           r'auth)\b\s*[=:]\s*)[^\s&;,\'"]+')
_URL_USER = re.compile(r'(?<=://)[^/\s@]+@')  # user:password@ of a URL
_EMBEDDED_PATH = re.compile(r'(?<![\w.:/~-])(?:~|[A-Za-z]:)?[/\\](?:[^\s/\\\'"(),;:]+[/\\])+([^\s/\\\'"(),;:]*)')
_LOCAL = ('/', '~', './', '../', '\\\\', 'file:', 'local-dir:')


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


def is_secret_key(key: Any) -> bool:
    """``key`` names a secret (``api_token``, ``HF-Token``, ``password``, ...) or holds a token itself."""
    text = str(key)
    return any(w in text.lower().replace('-', '_') for w in SECRET_KEY_WORDS) or bool(_TOKENS.search(text))


def _is_path_key(key: Optional[str]) -> bool:
    return bool(key) and (key in PATH_KEYS or key.endswith(_PATH_KEY_ENDINGS))


def public_text(text: str, key: Optional[str] = None) -> str:
    """``text`` fit for a public record: token-shaped strings and ``name=value`` secrets redacted, URLs without
    credentials, local paths by their last part (every value of a path key ``key``, any value that is a local
    path, and absolute paths inside longer text)."""
    text = _TOKENS.sub(REDACTED, _NAMED_SECRET.sub(lambda m: m.group(1) + REDACTED, _URL_USER.sub('', text)))
    if _is_path_key(key) or text.startswith(_LOCAL) or re.match(r'[A-Za-z]:[/\\]', text) or \
            re.match(r'[a-z][a-z0-9+.-]*://', text):
        return public_ref(text) or text
    return _EMBEDDED_PATH.sub(lambda m: m.group(1), text)


def public_record(value: Any, key: Optional[str] = None) -> Any:
    """A copy of a record (mappings, lists, scalars: args.yaml, results.json, summary.csv rows) fit for
    publishing: entries whose key names a secret dropped, every string key and value through
    :func:`public_text` (``key``: the entry the value belongs to)."""
    if isinstance(value, dict):
        return {(public_text(k) if isinstance(k, str) else k): public_record(v, str(k))
                for k, v in value.items() if not is_secret_key(k)}
    if isinstance(value, (list, tuple)):
        return [public_record(v, key) for v in value]
    return public_text(value, key) if isinstance(value, str) else value
