"""Which environment values are secrets, and how they are shown: never.

The Kubernetes target refuses a literal credential in a spec (deploy/validate.py). The local and
docker targets accept one in `env`, since a job file on one's own machine is a fine place for a
test server's key, but its value must never reach a terminal, a log, job.json or a command line
(which every user of the machine can read in /proc/PID/cmdline, i.e. in `ps`).

A name is a secret's when it contains one of SECRET, PASSW (PASSWORD, PASSWD), TOKEN, KEY (API_KEY,
ACCESS_KEY, PRIVATE_KEY, and AWS_ACCESS_KEY_ID too: it is half of a credential pair and names the
account), CREDENTIAL, AUTH or PRIVATE, in any case. The rule errs on the side of hiding: a hidden
value that was harmless costs nothing. Whatever the name, the password of a URL
(`scheme://user:password@host`) is hidden as well.
"""

from __future__ import annotations

import re

SECRET_NAME = re.compile(r"SECRET|PASSW|TOKEN|KEY|CREDENTIAL|AUTH|PRIVATE", re.I)
HIDDEN = "<hidden>"
# The userinfo's password in a URL: scheme://user:password@host
URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s]*:)[^/@\s]+(@)")


def is_secret(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def value(name: str, raw: str) -> str:
    """`raw` as it may be shown for the variable `name`."""
    return HIDDEN if is_secret(name) else text(raw)


def text(raw: str) -> str:
    """Any text with the passwords of the URLs in it hidden."""
    return URL_PASSWORD.sub(rf"\1{HIDDEN}\2", raw)
