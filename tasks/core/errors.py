"""The error type for problems the user can fix (bad input, bad params): the CLI prints its message in one line."""

import re

# scheme://user:secret@host -> scheme://user:***@host; the password part ends at the last '@' before the host.
_USERINFO_SECRET = re.compile(r"([a-zA-Z][\w+.-]*://[^/\s:@]*):[^/\s]*@")


def mask_secrets(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URL replaced by ``***``."""
    return _USERINFO_SECRET.sub(r"\1:***@", text)


class UserError(Exception):
    """A problem with the user's input or configuration; the message names the file, the field and the fix."""


class Quarantined(Exception):
    """An item of a source cannot be used; the message is the reason recorded in quarantine.parquet."""
