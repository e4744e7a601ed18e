"""Errors a user can fix, in a module without heavy imports (the CLI refuses bad input before importing torch)."""


class DataError(ValueError):
    """A dataset that cannot be used, with the file and the problem in the message."""
