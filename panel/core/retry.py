"""How the panel's tasks ride out a database outage: hosts' reports are retried with backoff
instead of being lost (``@shared_task(**DATABASE_RETRY)``).

DATABASE_RETRY (1, 2, 4, … s apart, at most a minute, with jitter so the workers do not all come
back at once) keeps trying for about half an hour, for records that stay true however late
they arrive (an operation's result: each is idempotent). OBSERVATION_RETRY gives up after
about half a minute, for observations a late arrival would make wrong (a power state seen
then; the next reconcile, every 30 s, observes afresh). The message stays in Redis meanwhile.
"""

from django.db import InterfaceError, OperationalError

DATABASE_ERRORS = (OperationalError, InterfaceError)

DATABASE_RETRY = {
    "autoretry_for": DATABASE_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 40,
}

OBSERVATION_RETRY = {**DATABASE_RETRY, "retry_backoff_max": 8, "max_retries": 5}
