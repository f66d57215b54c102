"""PAM logins (the `pam` extra: python-pam over the system's libpam).

A user with `auth_pam_service: NAME` is asked for a clear-text password, which PAM checks with service NAME
(`pam_authenticate` then `pam_acct_mgmt`). PAM modules may block (pam_unix sleeps after a failure, others
ask a network service), so the check runs on a small thread pool and the answer comes back to the client's
worker loop; the loop never waits for PAM.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

THREADS = 4  # PAM conversations at once; more logins queue

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


class PamSetupError(Exception):
    pass


def check_available() -> None:
    """PamSetupError if python-pam or libpam cannot be loaded."""
    try:
        import pam
    except ImportError:
        raise PamSetupError("PAM authentication needs python-pam: pip install 'pgdoorman[pam]'") from None
    except OSError as e:  # libpam itself is missing
        raise PamSetupError(f"PAM authentication needs libpam: {e}") from None
    del pam


def _check(service: str, user: str, password: str) -> str | None:
    import pam

    p: Any = pam.pam()
    # pam_authenticate then pam_acct_mgmt, as PgDoorman; no pam_setcred: a pooler establishes no credentials.
    if p.authenticate(user, password, service=service, resetcreds=False):
        return None
    return f"{p.reason} (code {p.code})"


def authenticate(service: str, user: str, password: str, done: Callable[[str | None], None]) -> None:
    """Check in the background; `done(None)` on success, `done(reason)` on failure, called from a pool
    thread (the caller hands it to its loop)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="pam")
        ex = _executor

    def run() -> None:
        try:
            why = _check(service, user, password)
        except Exception as e:  # a broken module must fail the login, not the pooler
            why = f"PAM error: {e}"
        done(why)

    ex.submit(run)
