"""The one error type a user sees: one line that says what is wrong and what to do."""


class NnaugError(Exception):
    """Bad input or state the user can fix. The CLI prints it as one line and exits with code 2."""

    exit_code = 2
