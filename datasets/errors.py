"""Errors raised by the dataset readers and builders."""
from utils.errors import UserError


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset's files are not where the config says; the message names the paths and the fix."""


class DatasetConfigError(UserError, ValueError):
    """The config asks for something the dataset cannot give (name, class count, noise mode)."""
