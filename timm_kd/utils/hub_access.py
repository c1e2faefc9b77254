"""Talking to the Hub: its endpoint, one quick check that it can serve a file, and one clause for any failed
request.

Shared by the model builders' fallback to the local teacher store (``timm_kd.models``), the teacher loader
(``timm_kd.distill.teacher``) and the Hub tools (``timm_kd.hub``), so a Hub failure reads the same wherever it
happens; below all of them, so none imports another.
"""
from typing import Optional

from .messages import first_line

__all__ = ['hub_endpoint', 'hub_file_error', 'explain_hub_error', 'http_status']


def hub_endpoint() -> str:
    """The Hub endpoint the client talks to right now (``HF_ENDPOINT``, default https://huggingface.co)."""
    from huggingface_hub import constants
    return constants.ENDPOINT


def hub_file_error(hub_id: str, filename: str) -> Optional[Exception]:
    """None when ``filename`` of ``hub_id`` (``org/repo[@rev]``) is in the local Hub cache or the Hub answers for it;
    otherwise the error that says why not (returned, not raised).

    One HEAD request without retries, bounded by ``HF_HUB_ETAG_TIMEOUT`` (10 s by default); under
    ``HF_HUB_OFFLINE=1`` nothing is requested.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub import errors as hf_errors
    repo_id, _, revision = hub_id.partition('@')
    if isinstance(try_to_load_from_cache(repo_id, filename, revision=revision or None), str):
        return None
    if constants.HF_HUB_OFFLINE:
        return hf_errors.OfflineModeIsEnabled(f'HF_HUB_OFFLINE=1 and {hub_id}/{filename} is not cached')
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision or None),
                             timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - every failure means the same here: the Hub cannot serve it
        return e
    return None


def explain_hub_error(err: BaseException) -> str:
    """One short clause explaining a huggingface_hub / network failure."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hf_errors

    def _is(e: BaseException, name: str) -> bool:  # by name: some classes are missing in older clients
        cls = getattr(hf_errors, name, None)
        return cls is not None and isinstance(e, cls)

    chain, e = [], err
    while e is not None and len(chain) < 8:  # look through wrappers (timm re-raises some errors)
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if _is(e, 'GatedRepoError'):
            return 'the repository is gated: accept its conditions on the Hub and log in'
        if _is(e, 'RepositoryNotFoundError'):
            return 'the repository does not exist (or is private and no valid token was found)'
        if _is(e, 'RevisionNotFoundError'):
            return 'the requested revision does not exist'
        if _is(e, 'LocalEntryNotFoundError') or _is(e, 'OfflineModeIsEnabled'):
            if constants.HF_HUB_OFFLINE:
                return (f'HF_HUB_OFFLINE=1 is set and the files are not in the local cache ({constants.HF_HUB_CACHE}); '
                        'download them once online or unset HF_HUB_OFFLINE')
            return f'the Hub at {constants.ENDPOINT} could not be reached and the files are not in the local cache'
        if _is(e, 'EntryNotFoundError'):
            return 'the repository exists but does not contain the expected file (config.json / model.safetensors)'
        if _is(e, 'HfHubHTTPError'):
            status = http_status(e)
            return f'the Hub answered HTTP {status}' if status else f'the Hub request failed ({first_line(e)})'
    err = chain[0]
    if 'Timeout' in type(err).__name__:
        return f'the Hub at {constants.ENDPOINT} did not answer in time ({type(err).__name__})'
    if isinstance(err, (ConnectionError, TimeoutError)) or type(err).__module__.startswith(('httpx', 'httpcore')):
        return f'the Hub at {constants.ENDPOINT} could not be reached ({type(err).__name__})'
    return f'{type(err).__name__}: {first_line(err)}'


def http_status(err: BaseException) -> Optional[int]:
    """The HTTP status of a failed Hub request (None when there was no answer)."""
    return getattr(getattr(err, 'response', None), 'status_code', None)
