"""Errors that are the user's to fix: the CLI prints their message and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (bad file, bad dataset, bad option), described in one sentence."""


class DatasetError(UserError):
    """A raw dataset folder does not follow the expected convention."""


class ImageReadError(UserError):
    """An image file cannot be read or has an unsupported layout."""


class CorruptFileError(UserError, ValueError):
    """A file autoseg wrote earlier cannot be parsed (cut short or damaged); also a ``ValueError`` for callers that
    catch parse errors to redo the file."""
