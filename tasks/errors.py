"""The error type for problems the user can fix (bad input, bad params): the CLI prints its message in one line."""


class UserError(Exception):
    """A problem with the user's input or configuration; the message names the file, the field and the fix."""


class Quarantined(Exception):
    """An item of a source cannot be used; the message is the reason recorded in quarantine.parquet."""
