"""Errors that are the user's to fix: the CLI prints their message and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (bad file, bad dataset, bad option), described in one sentence."""


class DatasetError(UserError):
    """A raw dataset folder does not follow the expected convention."""


class ImageReadError(UserError):
    """An image file cannot be read or has an unsupported layout."""
