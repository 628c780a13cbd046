"""The ingest's errors a user can fix, each with a message that says how.

They live apart from the modules that raise them so the CLI can catch them without importing torch,
which only the ingest command needs (it costs most of a query command's start-up time).
"""

from __future__ import annotations


class ModelNotFound(Exception):
    """A model name or path that cannot be loaded; the message says what would work."""


class CaptureError(ValueError):
    """A capture setting that cannot be honoured; the message says what is allowed."""


class TokenError(ValueError):
    """A target or distractor that is not exactly one token; the message shows how it tokenises."""


class DeviceError(ValueError):
    """A --device that this machine does not have."""


class SAEError(ValueError):
    """A sparse autoencoder that cannot be loaded or spliced in; the message names the field and value."""


class PromptFileError(ValueError):
    """A prompt file that cannot be read as text at all (one bad line is skipped instead); the message says
    how to convert it."""
