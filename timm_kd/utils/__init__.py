"""The ground floor of timm-kd, imported by every layer and importing none: the user-error type
(:mod:`.errors`), safe file reads, atomic file writes and folder locks (:mod:`.files`), one-sentence messages
and the filter of published records (:mod:`.messages`) and the Hub requests the teacher loader and the Hub
tools share (:mod:`.hub_access`)."""
from .errors import UsageError
from .files import OutputError, atomic_copy, atomic_save, atomic_write_bytes, atomic_write_text
from .messages import first_line, public_ref
