"""Errors of the data pipeline."""


class DataError(Exception):
    """A data folder or input file that cannot be used; the message names it and says why."""
