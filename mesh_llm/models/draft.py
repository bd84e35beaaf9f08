"""Which draft a model is served with: `--draft`, `--no-draft`, or its catalog pairing.

Resolved on the node, before the model server starts; the model server itself checks that the
draft's vocabulary matches the model's (and exits, saying why, if not).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mesh_llm.errors import UnknownModelError
from mesh_llm.models.catalog import find_entry
from mesh_llm.models.resolve import ResolvedModel, check_gguf, local_path

log = logging.getLogger(__name__)

LOOKUP = "lookup"
OFF = "off"


def resolve_draft_spec(spec: str) -> str:
    """What an explicit `--draft` names: "lookup", or the path of a GGUF on this machine.

    A catalog name must be on disk already (`mesh-llm download NAME`): a draft is never
    downloaded behind the user's back. Raises UnknownModelError with what to do otherwise.
    """
    if spec == LOOKUP:
        return LOOKUP
    path = Path(spec).expanduser()
    if path.is_file():
        check_gguf(path)
        return str(path.resolve())
    entry = find_entry(spec)
    if entry is None:
        raise UnknownModelError(f"--draft {spec!r} is neither 'lookup', a .gguf file, nor a catalog model")
    found = local_path(entry)
    if found is None:
        raise UnknownModelError(
            f"draft {entry.name} is not on this machine: run `mesh-llm download {entry.name}`"
        )
    return str(found)


def choose_draft(model: ResolvedModel, draft: str | None) -> str | None:
    """The `--draft` value the model server gets for `model`, or None for no speculation.

    `draft` is the node's setting: OFF (--no-draft), an explicit spec (--draft), or None for the
    catalog pairing, used when the paired draft is on disk.
    """
    if draft == OFF:
        return None
    if draft is not None:
        return resolve_draft_spec(draft)
    entry = model.entry
    if entry is None or entry.draft is None:
        return None
    paired = find_entry(entry.draft)
    found = local_path(paired) if paired is not None else None
    if found is None:
        log.info(
            "%s pairs with draft %s, which is not on disk (mesh-llm download %s --draft)",
            model.name, entry.draft, model.name,
        )  # fmt: skip
        return None
    if found == model.path:
        return None  # the model is its family's draft itself
    return str(found)
