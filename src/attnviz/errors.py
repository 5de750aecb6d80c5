"""The few exception types the CLI turns into one-line messages (exit code 2)."""

from __future__ import annotations


class AttnvizError(Exception):
    """Base class: a problem the user can act on; the message is one line."""


class ModelNotFoundError(AttnvizError):
    """Unknown alias, missing folder, uncached hub id while offline, or package not installed."""


class DeviceError(AttnvizError):
    """The requested device or dtype cannot be used here."""


class InputError(AttnvizError):
    """Bad text, token, layer or head selection, or file."""


class TokenNotFoundError(InputError):
    """A word asked for is not in the text; the message lists the tokens that are."""


class TextTooLongError(InputError):
    """The text is longer than the model's maximum and --truncate was not given."""
