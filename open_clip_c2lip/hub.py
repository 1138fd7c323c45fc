"""Hugging Face Hub files (tokenizers, pretrained weights, text-tower configs) cache first, failing
fast without the Hub.

open_clip and transformers fetch what a model needs through ``huggingface_hub``, which, with no
connection, retries each file for about a minute and then raises a long chain of errors. Here every
load runs first with the Hub switched to cache-only (``huggingface_hub.constants.HF_HUB_OFFLINE``
for the duration of the call): what the local cache holds is used as is, with no request at all.
Only when a file is missing is the Hub asked, once, with no retry (:func:`unreachable_reason`):
if it answers, the load runs again as open_clip does it (downloading into the cache); if not, or
if ``HF_HUB_OFFLINE`` is set, ``HubUnavailableError`` names what is missing and what to pass
instead, and the CLIs print it as one ``error:`` line.
"""
import contextlib
from typing import Callable, Iterable, Iterator, Optional, Sequence, Tuple, TypeVar

T = TypeVar("T")


class HubUnavailableError(ConnectionError):
    """Files a model needs from the Hugging Face Hub are not cached and the Hub is out of reach."""


def cache_folder() -> str:
    """The Hugging Face hub cache (``HF_HUB_CACHE``, by default ``$HF_HOME/hub``)."""
    from huggingface_hub import constants
    return constants.HF_HUB_CACHE


def unreachable_reason(timeout: Optional[float] = None) -> Optional[str]:
    """Why the Hub cannot be used now (``HF_HUB_OFFLINE`` set, or one request to ``HF_ENDPOINT``
    failing), or ``None`` when it answers. One request, no retry; ``timeout`` (s) defaults to
    ``HF_HUB_ETAG_TIMEOUT`` (10 s), the time huggingface_hub gives a file's metadata request."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        response = get_session().head(constants.ENDPOINT, timeout=timeout or constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as e:  # whatever keeps the request from an answer (DNS, refused, timeout, proxy)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"{constants.ENDPOINT} does not answer: {detail}"
    if response.status_code >= 500:
        return f"{constants.ENDPOINT} answers HTTP {response.status_code}"
    return None


@contextlib.contextmanager
def cache_only() -> Iterator[None]:
    """huggingface_hub (and transformers, which asks it) in offline mode for the block: cached files
    are used without a request, a missing one raises at once."""
    from huggingface_hub import constants
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _chain(error: Optional[BaseException]) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:  # transformers' chains can loop
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_cache_miss(error: BaseException) -> bool:
    """Whether ``error`` comes from a file that is neither cached nor downloadable in offline mode
    (open_clip and transformers wrap huggingface_hub's error in their own)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    return any(isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)) for e in _chain(error))


def is_cached(repo_id: str, filenames: Iterable[str]) -> bool:
    """Whether the cache holds any of ``filenames`` (alternatives, e.g. ``.safetensors`` and
    ``.bin``) of the model repo ``repo_id`` at ``main``."""
    from huggingface_hub import try_to_load_from_cache
    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in filenames)


def cache_first(load: Callable[[], T]) -> Tuple[Optional[T], Optional[BaseException]]:
    """``(load(), None)`` with the Hub cache-only, or ``(None, error)`` when a file is not cached.
    Other errors propagate."""
    try:
        with cache_only():
            return load(), None
    except Exception as e:
        if not is_cache_miss(e):
            raise
        return None, e


def require(needs: Sequence[str], instead: str, cause: Optional[BaseException] = None) -> None:
    """Return when the Hub answers (the caller then downloads ``needs``); raise
    ``HubUnavailableError`` naming ``needs`` and what to pass ``instead`` when it does not."""
    reason = unreachable_reason()
    if reason is None:
        return
    verb = "is" if len(needs) == 1 else "are"
    raise HubUnavailableError(f"{' and '.join(needs)} {verb} not in the local Hugging Face cache "
                              f"({cache_folder()}) and the Hub cannot be reached ({reason}); {instead}") from cause


def load(load_fn: Callable[[], T], need: str, instead: str) -> T:
    """``load_fn()`` cache first; when it misses a file, once more with the Hub if it answers, else
    ``HubUnavailableError`` (see :func:`require`)."""
    result, miss = cache_first(load_fn)
    if miss is None:
        return result
    require([need], instead, miss)
    return load_fn()
