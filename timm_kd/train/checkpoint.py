"""The old home of the run's file writes and RNG capture, kept for the imports that use it: the atomic writes
are :mod:`timm_kd.utils.files`, the RNG capture of a checkpoint is in :mod:`timm_kd.train.state`."""
from timm_kd.utils.files import (  # noqa: F401
    TEMP_PREFIX, OutputError, atomic_copy, atomic_save, atomic_write_bytes, atomic_write_text, output_error,
    remove_stale_temp_files)
from .state import capture_rng_state, restore_rng_state  # noqa: F401
