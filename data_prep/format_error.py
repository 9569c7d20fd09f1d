"""The one error type every reader raises for data that is not in its expected layout."""

from __future__ import annotations


class DataFormatError(ValueError):
    """A data folder or file is not what its reader expects; the message names the file and what was wrong."""
