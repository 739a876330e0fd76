"""One exception hierarchy. Every user-facing failure is a ConceptgenError whose
message is a single line telling the user what to do; the CLI prints it without
a traceback (``--debug`` shows one)."""
from __future__ import annotations


class ConceptgenError(Exception):
    """Base of every error meant for the user. ``str(err)`` is one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def shorten(text: object, limit: int = 200) -> str:
    """``text`` on one line, at most ``limit`` characters, cut at a word boundary with an
    ellipsis (a message quoting another library's error must never end mid-word)."""
    words = " ".join(str(text).split())
    if len(words) <= limit:
        return words
    cut = words[:limit - 1]
    head = cut.rsplit(" ", 1)[0] if " " in cut else cut
    return head.rstrip(",;:") + "…"


class ConfigError(ConceptgenError):
    """Bad option, conflicting flags, missing file or unknown name."""


class VideoReadError(ConceptgenError):
    """A file could not be decoded as a video (corrupt, truncated, empty, not a video)."""


class ModelError(ConceptgenError):
    """Unknown model name, unloadable checkpoint, or weights not available offline."""


class LayerNotFoundError(ModelError):
    """A layer name that is not in the model."""


class UnknownClassError(ModelError):
    """A class name or index the model does not know."""


class DataError(ConceptgenError):
    """Too few examples, empty pool, or inputs too short for the model."""


class StaleVersionError(ConceptgenError):
    """An edit was based on an out-of-date version of a record."""

    exit_code = 3


class NotFoundError(ConceptgenError):
    """A record (run, cluster, concept, user) that does not exist."""


class UnreachableError(ConceptgenError):
    """A database server or Ray cluster that cannot be reached (address, port, credentials)."""


class StoreUnavailableError(UnreachableError):
    """The database went away during work (server stopped, connection lost, disk gone).
    What was committed before is kept; rerunning the command resumes."""


class IntegrityError(ConceptgenError):
    """A checksum mismatch or other corruption in stored or exported data."""


class TimeBudgetError(ConceptgenError):
    """A video ran past its per-video time budget in one stage (it is recorded as failed)."""
