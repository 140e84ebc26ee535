"""The only code that spells Redis key strings.

Layout: ``{prefix}:{entity}:{id}[:{facet}]``. The task hash ``{prefix}:task:{id}``
(with its ``state`` field), the ``{prefix}:tasks`` zset and the default prefix
``monitor`` are a public contract that other tools may read.

Lua scripts get every key through KEYS. A batch touches keys that depend on
what it reads (a task's previous state index, its parent's children set), so
the write script receives key *prefixes* from :meth:`Keys.script_keys` and only
appends ids to them; it never spells a key of its own. (This ties the monitor to
a single Redis instance, not a Redis Cluster: see the README.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "monitor"

    # -- tasks -------------------------------------------------------------
    def task(self, task_id: str) -> str:
        """hash: the task's fields (state, name, args, result, timestamps ...)."""
        return f"{self.prefix}:task:{task_id}"

    def timeline(self, task_id: str) -> str:
        """list: one JSON entry per transition {s, t, h, src, r}."""
        return f"{self.prefix}:task:{task_id}:timeline"

    def children(self, task_id: str) -> str:
        """set: ids of tasks whose parent_id is this task."""
        return f"{self.prefix}:task:{task_id}:children"

    @property
    def tasks(self) -> str:
        """zset: task id -> last update time (the newest-first list)."""
        return f"{self.prefix}:tasks"

    def by_state(self, state: str) -> str:
        return f"{self.prefix}:tasks:state:{state}"

    def by_name(self, name: str) -> str:
        return f"{self.prefix}:tasks:name:{name}"

    def by_worker(self, hostname: str) -> str:
        return f"{self.prefix}:tasks:worker:{hostname}"

    def group(self, group_id: str) -> str:
        """set: ids of the tasks of one group or chord header."""
        return f"{self.prefix}:group:{group_id}"

    @property
    def task_names(self) -> str:
        """zset: task name -> last time seen (task types)."""
        return f"{self.prefix}:names"

    # -- workers -------------------------------------------------------------
    def worker(self, hostname: str) -> str:
        return f"{self.prefix}:worker:{hostname}"

    @property
    def workers(self) -> str:
        """zset: hostname -> last sign of life (heartbeat or task activity)."""
        return f"{self.prefix}:workers"

    # -- feeds and counters -----------------------------------------------
    def stats(self, minute: int) -> str:
        """hash: global counters and histograms of one minute (epoch seconds // 60);
        fields spelled in monitor/vocabulary.py (``state:SUCCESS``, ``rt:0.25`` ...)."""
        return f"{self.prefix}:stats:{minute}"

    def stats_hour(self, hour: int) -> str:
        """hash: the same for one hour (epoch seconds // 3600)."""
        return f"{self.prefix}:stats:h:{hour}"

    @staticmethod
    def stats_names(period_key: str) -> str:
        """hash: per-name counters of the period of ``stats()`` / ``stats_hour()``
        (fields ``<field>|<task name>``)."""
        return period_key + ":names"

    @staticmethod
    def stats_workers(period_key: str) -> str:
        """hash: per-worker counters of the period (fields ``<field>|<hostname>``)."""
        return period_key + ":workers"

    @property
    def changes(self) -> str:
        """stream: change feed for the web tier (bounded)."""
        return f"{self.prefix}:changes"

    @property
    def meta(self) -> str:
        """hash: monitor's own counters (dropped records, malformed events ...)."""
        return f"{self.prefix}:meta"

    @property
    def web_rooms(self) -> str:
        """zset: live Socket.IO room name -> expiry (rooms shared by serve processes)."""
        return f"{self.prefix}:web:rooms"

    @property
    def web_leader(self) -> str:
        """string: token of the serve process that tails the change feed for all."""
        return f"{self.prefix}:web:leader"

    def lease(self, name: str) -> str:
        """string: token of the process holding the lease on one elected job
        ("web", "queues", "alerts", "reconcile": see monitor.lease)."""
        return f"{self.prefix}:lease:{name}"

    # -- authentication and audit (monitor/auth.py, monitor/audit.py) ----------
    @property
    def auth_users(self) -> str:
        """hash: user name -> JSON {"role", "password" (scrypt hash), "created"}."""
        return f"{self.prefix}:auth:users"

    @property
    def auth_tokens(self) -> str:
        """hash: token id -> JSON {"name", "role", "secret" (sha256 hex), "created", "user"}."""
        return f"{self.prefix}:auth:tokens"

    def auth_fail_user(self, name: str) -> str:
        """string: failed logins for one user name in the current window (TTL)."""
        return f"{self.prefix}:auth:fail:user:{name}"

    def auth_fail_addr(self, addr: str) -> str:
        """string: failed logins from one client address in the current window (TTL)."""
        return f"{self.prefix}:auth:fail:addr:{addr}"

    @property
    def auth_secret(self) -> str:
        """string: the session signing key every serve process shares (when not configured)."""
        return f"{self.prefix}:auth:secret"

    @property
    def audit(self) -> str:
        """stream: one entry per attempted operator action, refused ones included."""
        return f"{self.prefix}:audit"

    # -- /metrics totals (monitor/web/metrics.py, issue 10) ------------------------
    @property
    def metrics_totals(self) -> str:
        """hash: monotonic totals behind /metrics' counters and histograms (fields
        spelled in monitor/vocabulary.py), kept by the write script, never expiring."""
        return f"{self.prefix}:metrics:totals"

    def metrics_labels(self, kind: str) -> str:
        """set: the values of one label kind (name, hostname, queue, exception)
        admitted into the totals; past its cap, new values count as __other__."""
        return f"{self.prefix}:metrics:labels:{kind}"

    # -- queues (monitor/queues.py, issue 10) ------------------------------------
    @property
    def queues(self) -> str:
        """zset: queue name -> last time a task was published to it (the write
        script keeps it, capped and trimmed by age)."""
        return f"{self.prefix}:queues"

    @property
    def queues_latest(self) -> str:
        """string: JSON of the sampler's last sample of every known queue."""
        return f"{self.prefix}:queues:latest"

    def queue_history(self, queue: str) -> str:
        """zset: minute (epoch seconds // 60) -> "minute,depth,oldest_age,consumers"
        for one queue (7 days, a capped number of queues)."""
        return f"{self.prefix}:queue:{queue}:history"

    # -- alerts (monitor/alerts.py, issue 10) ------------------------------------
    @property
    def alert_rules(self) -> str:
        """hash: rule name -> JSON rule (the rules operators made in the UI)."""
        return f"{self.prefix}:alerts:rules"

    @property
    def alert_cursor(self) -> str:
        """string: id of the last change feed entry the alert evaluator read."""
        return f"{self.prefix}:alerts:cursor"

    def alert_dedup(self, rule: str, digest: str) -> str:
        """string (TTL = the rule's dedup window): an event alert (rule + subject
        digest) was sent; another one within the window is not."""
        return f"{self.prefix}:alerts:dedup:{rule}:{digest}"

    def alert_active(self, rule: str) -> str:
        """hash: subject -> JSON {since, sent} of a condition rule's firing subjects."""
        return f"{self.prefix}:alerts:active:{rule}"

    @property
    def alert_pending(self) -> str:
        """zset: delivery id -> time of its next attempt."""
        return f"{self.prefix}:alerts:pending"

    @property
    def alert_deliveries(self) -> str:
        """hash: delivery id -> JSON alert with its webhook and attempts (pending ones)."""
        return f"{self.prefix}:alerts:deliveries"

    @property
    def alert_log(self) -> str:
        """stream (MAXLEN ~): one entry per alert whose delivery ended (sent, failed, dropped)."""
        return f"{self.prefix}:alerts:log"

    @property
    def alert_status(self) -> str:
        """hash: the evaluator's last run (time, rules, per-rule problems)."""
        return f"{self.prefix}:alerts:status"

    def beat_script_keys(self, names: list[str]) -> list[str]:
        """KEYS for ``beat_runs.lua``: task hash prefix, tasks zset, one name index per name."""
        return [self.task(""), self.tasks, *(self.by_name(name) for name in names)]

    def pattern(self) -> str:
        """Glob matching every key of this prefix (tests, `monitor purge`)."""
        return f"{self.prefix}:*"

    def script_keys(self) -> list[str]:
        """KEYS for the batch script, in the order its header documents."""
        return [
            self.task(""),  # 1: task hash prefix
            self.tasks,  # 2
            self.by_state(""),  # 3: prefix
            self.by_name(""),  # 4: prefix
            self.by_worker(""),  # 5: prefix
            self.group(""),  # 6: prefix
            self.worker(""),  # 7: prefix
            self.workers,  # 8
            self.stats(0)[:-1],  # 9: prefix
            self.changes,  # 10
            self.task_names,  # 11
            self.timeline("\0").split("\0")[1],  # 12: timeline suffix
            self.children("\0").split("\0")[1],  # 13: children suffix
            self.stats_hour(0)[:-1],  # 14: prefix
            self.stats_names(""),  # 15: suffix
            self.stats_workers(""),  # 16: suffix
            self.queues,  # 17: queues seen at publish (issue 10, queues)
            self.metrics_totals,  # 18
            self.metrics_labels(""),  # 19: prefix
        ]


@dataclass(frozen=True)
class RedisBrokerKeys:
    """kombu's Redis transport keys (not the monitor's): a queue's lists and where it
    keeps delivered, unacknowledged messages (kombu/transport/redis.py
    ``Channel.unacked_key``, ``unacked_index_key``), with its ``global_keyprefix``
    transport option. Read by monitor.queues and monitor.lost, never written."""

    global_keyprefix: str = ""
    unacked_key: str = "unacked"
    unacked_index_key: str = "unacked_index"

    @property
    def unacked(self) -> str:
        """hash: delivery tag -> JSON [message, exchange, routing key]."""
        return self.global_keyprefix + self.unacked_key

    @property
    def unacked_index(self) -> str:
        """zset: delivery tag -> time it was delivered."""
        return self.global_keyprefix + self.unacked_index_key

    def queue_lists(self, queue: str, steps: Sequence[int], sep: str) -> list[str]:
        """The lists holding ``queue``'s messages: the queue's own, then one per
        non-zero priority step (kombu's ``Channel._q_for_pri``: ``queue + sep + step``).
        Read by monitor.queues."""
        keys = [self.global_keyprefix + queue]
        keys += [
            f"{self.global_keyprefix}{queue}{sep}{step}" for step in sorted(set(steps)) if step
        ]
        return keys


@dataclass(frozen=True)
class RedBeatKeys:
    """celery-redbeat's keys (``redbeat/schedulers.py`` RedBeatConfig), which the
    monitor only reads: ``{prefix}{entry name}`` is an entry's hash (fields
    ``definition`` and ``meta``, JSON), ``{prefix}:schedule`` the zset of entry
    keys scored by their next run (UNIX time). The default prefix is
    ``redbeat:`` (the app's ``redbeat_key_prefix``)."""

    prefix: str = "redbeat:"

    def entry(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def schedule(self) -> str:
        return f"{self.prefix}:schedule"

    @property
    def lock(self) -> str:
        """string: held (with a TTL) by the running redbeat scheduler."""
        return f"{self.prefix}:lock"
