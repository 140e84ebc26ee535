"""Leader election: a token-checked lease in Redis, one holder among many processes.

Several ``serve`` processes (and receivers) share one store; some work must be
done by exactly one of them: tailing the change feed for shared rooms, sampling
queue depths, evaluating alert rules, reconciling tasks with the result backend.
Each such job holds a :class:`Lease` on its own key (``Keys.lease(name)``).

The lease is a string holding the holder's random token with a TTL. It is
taken with ``SET NX PX`` and extended only by a script that checks the token
first (redis-py's ``Lock.extend`` does the same): a ``GET`` followed by
``PEXPIRE`` could extend the lease of a process that took over in between.
A holder that dies loses the lease after ``ttl``; one that stops releases it at
once, so another process takes over without waiting.
"""

from __future__ import annotations

import uuid
from typing import Any

#: KEYS[1] = lease key; ARGV[1] = holder token, ARGV[2] = lease (ms), ARGV[3] = "1"
#: to take a free lease ("0": only extend one we hold).
#: returns 1 when the caller holds the lease afterwards, else 0.
CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if ARGV[3] == '1' and redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""

#: KEYS[1] = lease key; ARGV[1] = holder token. returns 1 when released, else 0.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """One process's claim on one lease key.

    ``claim()`` takes the lease when free and extends it when held; call it at
    least every ``ttl_ms / 2``. ``release()`` gives it up when held.
    """

    def __init__(self, client: Any, key: str, ttl_ms: int = 5000, token: str | None = None):
        self.client = client
        self.key = key
        self.ttl_ms = int(ttl_ms)
        self.token = token or uuid.uuid4().hex
        self._claim = client.register_script(CLAIM)
        self._release = client.register_script(RELEASE)
        #: the answer of the last claim (False before any)
        self.held = False

    def claim(self, take: bool = True, client: Any = None) -> bool:
        """Hold (take or extend) the lease; True when this process holds it.

        ``take=False`` only extends a lease already held (a stopping process
        must not take the lead back). ``client`` may be a pipeline: the answer
        then comes with its ``execute()`` and ``held`` is not updated.
        """
        result = self._claim(
            keys=[self.key],
            args=[self.token, self.ttl_ms, "1" if take else "0"],
            client=client or self.client,
        )
        if client is not None and client is not self.client:
            return False  # queued in a pipeline
        self.held = result == 1
        return self.held

    def release(self) -> bool:
        """Give the lease up at once when held; True when it was."""
        self.held = False
        return self._release(keys=[self.key], args=[self.token], client=self.client) == 1

    def holder(self) -> str | None:
        """The token of the current holder, None when the lease is free."""
        value = self.client.get(self.key)
        if isinstance(value, bytes):
            value = value.decode()
        return value
