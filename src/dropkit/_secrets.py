"""Credentials never leave the process: :func:`mask_credentials` blanks them in any text dropkit prints or writes.

Every line the command line prints for an error, every report, ``command.txt`` and the
storage URL that ``dropkit tune`` shows pass through it: the password of a URL
(``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``) and the value of a
``password=`` / ``token=`` style query parameter become ``***``.

Example:
    >>> mask_credentials("--storage postgresql://ann:s3cret@db.example:5432/study?sslpassword=x")
    '--storage postgresql://ann:***@db.example:5432/study?sslpassword=***'
"""

from __future__ import annotations

import re

__all__ = ["mask_credentials", "url_host"]

#: ``scheme://user:password@host``: the password runs to the last ``@`` that a host name follows (a raw ``@`` or
#: ``/`` in it is masked too).
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:'\"]*):(?P<pw>[^\s'\"]*)@(?=[^\s'\"@/]*(?:[/?#\s'\"]|$))"
)
_SECRET_PARAM = re.compile(
    r"(?i)(?P<key>\b[a-z_]*(?:password|passwd|pwd|secret|token|api_?key|access_?key))=(?P<value>[^&\s'\"]+)"
)


def mask_credentials(text: str) -> str:
    """``text`` with every URL password and every ``password=`` / ``secret=`` / ``token=`` value replaced by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:***@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}=***", text)


def url_host(url: str) -> str:
    """``host[:port]`` of a database URL (``"localhost"`` when it names none, e.g. a Unix socket), for messages.

    Example:
        >>> url_host("postgresql://ann:s3cret@db.example:5433/study")
        'db.example:5433'
    """
    m = re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://(?:[^/]*@)?(?P<host>[^/?#]*)", url)
    return (m["host"] if m else "") or "localhost"
