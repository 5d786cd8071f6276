"""One exception type for bad input: the CLI prints its message as one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (a file, key or value). The message names it and what was expected."""
