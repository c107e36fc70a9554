"""The error type for problems the user can fix (bad input, bad params): the CLI prints its message in one line.

Also the one place secrets in URLs are recognised: ``mask_secrets`` (every message, log record and file that may
hold a URL goes through it) and ``credential_problem`` (params refuse a URL that carries a credential).
"""

from __future__ import annotations

import re

# scheme://userinfo@host, the userinfo up to the last '@' before the path (a password may hold '@'). The scheme
# starts a run of scheme characters (the lookbehind) and its repeat is possessive, so a huge text (a 10 MB value in
# an error) is scanned in linear time.
_USERINFO = re.compile(r"(?<![\w+.-])(?P<scheme>[a-zA-Z][\w+.-]{0,30}+)://(?P<userinfo>[^/\s?#]{0,2048})@")
# Schemes whose user name is an account name, not a secret (ssh://git@host/...); a password there is still masked.
_USER_IS_NAME = ("ssh", "git+ssh", "ssh+git", "sftp", "scp", "rsync")
# Query parameters that carry a secret: ?token=..., &access_key=..., X-Amz-Signature=..., sig=..., ...
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;](?:[\w.~-]{0,64}[_.~-])?(?:token|api_?key|key|secret|passw(?:or)?d|pwd|sig|signature|credentials?|"
    r"auth|authorization|session)(?:[_.~-][\w.~-]{0,64})?=)[^&#\s'\"]*", re.IGNORECASE)
MASK = "***"
CREDENTIALS_FIX = ("give git its credentials through a credential helper (`git config credential.helper`, "
                   "e.g. `store` or your platform's) or the environment, and DVC through its remote config "
                   "(`dvc remote modify --local <remote> user|password|...`) or the environment (AWS_PROFILE, ...)")


def mask_secrets(text: str) -> str:
    """``text`` with every credential of a URL in it replaced by ``***``: the password of ``scheme://user:pass@``,
    the whole user part of ``https://token@`` (any scheme but ssh's, where the user is an account name), and the
    value of a query parameter named like a secret (``?token=``, ``access_key=``, ``X-Amz-Signature=``, ``sig=``)."""
    if "://" in text:
        text = _USERINFO.sub(_masked_userinfo, text)
    return _SECRET_PARAM.sub(rf"\g<name>{MASK}", text) if "=" in text else text


def _masked_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match.group("scheme"), match.group("userinfo")
    user, colon, _ = userinfo.partition(":")
    if colon:
        userinfo = f"{user}:{MASK}"
    elif scheme.lower() not in _USER_IS_NAME:
        userinfo = MASK
    return f"{scheme}://{userinfo}@"


def credential_problem(url: str) -> str | None:
    """Why ``url`` may not be written in params (it carries a password, a token or a secret query parameter), or
    None when it carries no credential. The account name of an ssh URL (``ssh://git@host``, ``git@host:org/r``) is
    not one."""
    if mask_secrets(url) == url:
        return None
    for found in _USERINFO.finditer(url):
        if ":" in found.group("userinfo"):
            return "embeds a password"
        if found.group("scheme").lower() not in _USER_IS_NAME:
            return "embeds a token (the user part of the URL)"
    return "carries a secret in its query (a token, key or signature)"


def refuse_credentials(value: str, field: str) -> None:
    """ValueError naming ``field``, the masked URL and where credentials go, when ``value`` carries one."""
    problem = credential_problem(value)
    if problem is not None:
        raise ValueError(f"{field} {mask_secrets(value)!r} {problem}; never put credentials in params: "
                         f"{CREDENTIALS_FIX}")


class UserError(Exception):
    """A problem with the user's input or configuration; the message names the file, the field and the fix.

    Its message is masked (``mask_secrets``) when the error is made, so no log, state message or traceback of it
    can show a credential."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(mask_secrets(a) if isinstance(a, str) else a for a in args))


class Quarantined(Exception):
    """An item of a source cannot be used; the message is the reason recorded in quarantine.parquet."""


def masked_exception(exc: BaseException) -> BaseException:
    """``exc``, or an exception of the same type (RuntimeError where that cannot be made) with its message masked
    when it holds a credential; for re-raising ``from None`` where a message leaves the process (a Prefect state)."""
    text = str(exc)
    masked = mask_secrets(text)
    if masked == text:
        return exc
    try:
        return type(exc)(masked)
    except Exception:  # an exception class whose constructor wants other arguments
        return RuntimeError(f"{type(exc).__name__}: {masked}")


def exception_chain(exc: BaseException, limit: int = 400) -> str:
    """An exception and its causes in one line (``SCM error`` tells nothing; the clone error under it does):
    the first message and the deepest, generic ones dropped, masked and clipped."""
    messages, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = " ".join(str(exc).split())
        if text and text not in ("SCM error",) and text not in messages:
            messages.append(text)
        exc = exc.__cause__ or exc.__context__
    if not messages:
        return "no detail"
    shown = messages if len(messages) <= 2 else [messages[0], messages[-1]]
    return mask_secrets(": ".join(m[:limit // len(shown)] for m in shown))
