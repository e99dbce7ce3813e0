"""Exceptions with messages that name the file and what is wrong with it."""

from __future__ import annotations


class FlowNarError(Exception):
    """Base class for errors a user can act on."""


class DataRootError(FlowNarError):
    """The data root is missing or incomplete."""


class AnnotationError(FlowNarError):
    """An annotation file is unreadable or has the wrong schema."""


class FeatureFileError(FlowNarError):
    """A per-video feature file is missing, unreadable, of the wrong shape or holds non-finite values."""


class CheckpointError(FlowNarError):
    """A checkpoint is missing, of another system, of an unsupported format version, or does not fit the data."""
