"""Errors that speak the user's language: which file, line, column or config key, and what was expected."""


class LMForgeError(Exception):
    """Base class of the errors lmforge raises on bad input or configuration."""


class DataError(LMForgeError, ValueError):
    """A data file or dataset does not match what the task needs."""


class ConfigError(LMForgeError, ValueError):
    """A configuration value cannot work; the message names the key, the value and what to use."""
