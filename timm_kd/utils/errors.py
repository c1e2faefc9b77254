"""The user-error type of every timm-kd command."""

__all__ = ['UsageError']


class UsageError(ValueError):
    """A user mistake (flags, files, incompatible models/data): one sentence, exit code 2, before any long work."""
