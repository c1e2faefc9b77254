"""The ground floor of timm-kd, imported by every layer and importing none: the user-error type
(:mod:`.errors`), safe file reads and atomic file writes (:mod:`.files`), one-sentence messages (:mod:`.messages`) and the Hub
requests the teacher loader and the Hub tools share (:mod:`.hub_access`)."""
from .errors import UsageError
from .files import OutputError, atomic_copy, atomic_save, atomic_write_bytes, atomic_write_text
from .messages import first_line, public_ref
