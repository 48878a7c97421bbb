"""Operation leases in Redis: an operation runs on at most one host worker at a time, never
again once it finished or the panel gave up on it, and a worker that died mid-operation can be
told from one still working.

The host worker consumes its queue with ``acks_late`` and ``reject_on_worker_lost``, so a task
whose worker died is delivered again: at once when only a pool child died, when the worker
starts again after the whole worker died (``restore_unacked``), and in any case after the
broker's visibility timeout. Every such delivery is fenced here, by one hash per operation
under the host's own keys (``berth:host:<name>:op:<id>``):

- ``claim`` (host worker, before running): ``done``/``abandoned`` → do not run; held by a live
  worker → ``busy`` (try later); free, lapsed, or held by a process known dead → claimed, with
  the attempt number (the driver's steps converge, so running again finishes the job).
- ``renew`` every few seconds while the driver works; ``finish`` stores the report before it is
  sent, so a report lost on the way can be sent again or applied by the panel.
- ``reap`` (panel, ``panel/instances/services/reaping.py``): ``abandoned`` when nobody holds
  the operation, in the same atomic step, so a late delivery can never run it afterwards.

Times come from Redis's own clock (``TIME`` inside the scripts): host and panel clocks may
differ. No Django here: both the host worker and the panel use it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import redis

from workers.config import host_key_prefix

# The worker renews every RENEW_SECONDS. A lease not renewed for LEASE_SECONDS has lapsed
# (another delivery may take the operation over); one not renewed for REAP_GRACE_SECONDS lets
# the panel give the operation up: long enough for a crashed worker to be restarted (systemd
# restarts it after 5 s) and take its operations over itself.
RENEW_SECONDS = 5.0
LEASE_SECONDS = 30
REAP_GRACE_SECONDS = 90
# Outcomes outlive any redelivery of the message (the visibility timeout is an hour).
KEEP_SECONDS = 2 * 24 * 3600

RUNNING, DONE, ABANDONED, BUSY, CLAIMED, ABSENT = (
    "running", "done", "abandoned", "busy", "claimed", "absent",
)

# KEYS: the operation's hash (state, worker, attempts, report), its lease marker and its alive
# marker. The markers expire by Redis's clock (hosts' and the panel's clocks may differ), so
# "not renewed for N seconds" is "the marker is gone".
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' or state == 'abandoned' then
  return {state, redis.call('HGET', KEYS[1], 'report') or ''}
end
if state == 'running' and redis.call('EXISTS', KEYS[2]) == 1 then
  local holder = redis.call('HGET', KEYS[1], 'worker') or ''
  if holder ~= ARGV[2] then
    return {'busy', holder}
  end
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], '1', 'EX', ARGV[4])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[5])
return {'claimed', tostring(attempts)}
"""

_RENEW = """
if redis.call('HGET', KEYS[1], 'state') == 'running'
   and redis.call('HGET', KEYS[1], 'worker') == ARGV[1] then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[3])
  return 1
end
return 0
"""

_FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('DEL', KEYS[2], KEYS[3])
if state == 'abandoned' then
  return state
end
redis.call('HSET', KEYS[1], 'state', 'done', 'report', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return state or ''
"""

_REAP = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' or state == 'abandoned' then
  return {state, redis.call('HGET', KEYS[1], 'report') or ''}
end
if state == 'running' then
  if redis.call('EXISTS', KEYS[3]) == 1 then
    return {'busy', ''}
  end
elseif ARGV[1] ~= '1' then
  return {'absent', ''}
end
redis.call('HSET', KEYS[1], 'state', 'abandoned')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {'abandoned', ''}
"""


def operation_key(host_name: str, operation_id: int) -> str:
    return f"{host_key_prefix(host_name)}op:{operation_id}"


def _keys(host_name: str, operation_id: int) -> tuple[str, str, str]:
    key = operation_key(host_name, operation_id)
    return key, key + ":lease", key + ":alive"


@dataclass(frozen=True)
class Verdict:
    """What a claim or a reap found: ``state`` is one of the constants above; ``attempt`` is
    set for a claim, ``holder`` for busy, ``report`` for done (operation_finished's kwargs)."""

    state: str
    attempt: int = 0
    holder: str = ""
    report: dict[str, Any] | None = None


def _verdict(reply: list[bytes]) -> Verdict:
    state, extra = (part.decode() if isinstance(part, bytes) else str(part) for part in reply)
    if state == CLAIMED:
        return Verdict(CLAIMED, attempt=int(extra))
    if state == BUSY:
        return Verdict(BUSY, holder=extra)
    return Verdict(state, report=json.loads(extra) if extra else None)


def worker_identity(pid: int | None = None) -> str:
    """This process, unambiguously on this machine: boot id, pid, and the pid's start time
    (so a pid reused after a crash is not mistaken for the dead worker)."""
    pid = pid or os.getpid()
    return f"{_boot_id()}:{pid}:{_start_time(pid)}"


def holder_is_dead(holder: str) -> bool:
    """True only when ``holder`` certainly ran on this machine since its last boot and is
    gone; anything else (another boot, a malformed id) waits for the lease to lapse."""
    try:
        boot, pid, started = holder.split(":")
        pid_number = int(pid)
    except ValueError:
        return False
    if boot != _boot_id():
        return False
    return _start_time(pid_number) != started


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown-boot"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot; "gone" for no process or a zombie
    (dead, only waiting for its parent to notice)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces and parentheses: split after its end.
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return "gone"
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return "gone"
    return fields[19]


class OperationLease:
    """One operation's lease, as a host worker holds it."""

    def __init__(self, client: redis.Redis, host_name: str, operation_id: int):
        self.client = client
        self.keys = _keys(host_name, operation_id)
        self.worker = worker_identity()

    def claim(self) -> Verdict:
        verdict = self._claim(dead_holder="")
        if verdict.state == BUSY and holder_is_dead(verdict.holder):
            verdict = self._claim(dead_holder=verdict.holder)
        return verdict

    def _claim(self, *, dead_holder: str) -> Verdict:
        reply = self.client.eval(_CLAIM, 3, *self.keys, self.worker, dead_holder, KEEP_SECONDS,
                                 LEASE_SECONDS, REAP_GRACE_SECONDS)
        return _verdict(reply)

    def renew(self) -> bool:
        return bool(self.client.eval(_RENEW, 3, *self.keys, self.worker, LEASE_SECONDS,
                                     REAP_GRACE_SECONDS))

    def finish(self, report: dict[str, Any]) -> bool:
        """Record the outcome; False when the panel had already given the operation up."""
        previous = self.client.eval(_FINISH, 3, *self.keys, json.dumps(report), KEEP_SECONDS)
        return (previous.decode() if isinstance(previous, bytes) else previous) != ABANDONED


def reap(client: redis.Redis, host_name: str, operation_id: int, *, when_absent: bool) -> Verdict:
    """The panel's judgement of an unfinished operation. ``abandoned`` means the operation is
    now fenced off for good (the panel must fail it); ``done`` carries the host's report that
    never arrived; ``busy`` is a lease renewed within REAP_GRACE_SECONDS; ``absent`` is no
    record at all while ``when_absent`` is false (with it, an absent one is abandoned too)."""
    reply = client.eval(_REAP, 3, *_keys(host_name, operation_id), "1" if when_absent else "0",
                        KEEP_SECONDS)
    return _verdict(reply)
