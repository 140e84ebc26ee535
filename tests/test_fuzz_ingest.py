"""Property tests: arbitrary event messages through the decoder, the model and the store.

Whatever a client publishes on the event exchange, the receiver's pipeline
must hold three promises (issue 8):

- the decoder (:func:`monitor.redis_fanout.decode` / ``decode_body``) raises
  :class:`~monitor.redis_fanout.UndecodableMessage` and nothing else;
- the model (:meth:`TaskEvent.from_celery_event`) raises
  :class:`~monitor.model.MalformedEvent` and nothing else, and what it returns
  fits the schema;
- the store (real Redis) accepts every record the model produces, and stores
  nothing outside the schema: a valid state, no store-owned field set by an
  event's extra field, finite index scores no later than now + the clock skew.

Runs are bounded (a few hundred examples, no example database) so the file
takes seconds.
"""

from __future__ import annotations

import base64
import bz2
import decimal
import json
import lzma
import math
import re
import time
import uuid
import zlib

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from monitor import model, redis_fanout
from monitor.model import MalformedEvent, TaskEvent, WorkerEvent

PROPERTY = hsettings(
    max_examples=200,
    deadline=None,
    database=None,  # no example database: every run explores afresh
    # the store fixture is shared by the examples of one test on purpose
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
NOW = time.time()
CAP = 64 * 1024  # max_decompressed_bytes here

# -- values ----------------------------------------------------------------------
BIG_NUMBERS = st.sampled_from(
    [2**53 + 1, 2**63, 2**64, 10**400, -(10**400), 1e308, -1e308, 5e-324, -0.0]
)
TEXT = st.text(st.characters(exclude_categories=()), max_size=40)  # lone surrogates too
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    BIG_NUMBERS,
    st.floats(),  # NaN and the infinities included
    TEXT,
    st.text(max_size=3).map(lambda t: t * 30_000),  # long
)


class Deep(list):
    """Lists nested ``depth`` deep, shown briefly (a failing example is printed)."""

    def __repr__(self) -> str:
        return f"<{self.depth} nested lists>"

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis's printer
        printer.text(repr(self))


def nest(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    deep = Deep([value])
    deep.depth = depth
    return deep


DEPTHS = (200, 300, 1000, 1025, 3000)  # about orjson's limits (255, 1024) and Python's (1000)
NESTED = {depth: nest(depth) for depth in DEPTHS}  # built once: nothing mutates them


def values(deep: st.SearchStrategy) -> st.SearchStrategy:
    return (
        st.recursive(
            SCALARS,
            lambda children: (
                st.lists(children, max_size=3)
                | st.dictionaries(st.text(max_size=8), children, max_size=3)
            ),
            max_leaves=6,
        )
        | deep
    )


VALUES = values(st.sampled_from(DEPTHS).map(NESTED.get))
# On the wire a deep value is spliced into the JSON text (json.dumps would recurse).
DEEP_MARK = re.compile(r'"\\u0000deep(\d+)"')
WIRE_VALUES = values(st.sampled_from(DEPTHS).map(lambda n: f"\x00deep{n}"))


def wire_json(value) -> str:
    """JSON text as a careless or hostile client may send it: NaN, Infinity,
    400-digit integers, nesting deeper than any decoder takes."""
    text = json.dumps(value)
    return DEEP_MARK.sub(lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), text)


# What kombu's JSON decoder can hand the model besides JSON's own types.
TAGGED = st.one_of(
    st.datetimes(),
    st.dates(),
    st.binary(max_size=20),
    st.decimals(allow_nan=True),
    st.uuids(),
    st.just(decimal.Decimal("1e999999")),
)

FORGED = ("FORGED", "-4242.4242")
OWNED = sorted(model.STORE_OWNED_FIELDS - {"uuid", "timestamp"})
FIELD_NAMES = st.one_of(
    st.sampled_from(sorted(model._TASK_FIELD_CHECKS) + sorted(model._WORKER_FIELD_CHECKS)),
    st.sampled_from(["worker", "client", "progress", "args_json", "children", "pid", "clock"]),
    st.text(max_size=80),
    st.text(min_size=60, max_size=200),
)
OWNED_EXTRAS = st.dictionaries(
    st.sampled_from(OWNED) | st.sampled_from(["args_truncated", "sent_reported", "x_truncated"]),
    st.sampled_from(FORGED),
    max_size=4,
)
TYPE_NAMES = st.sampled_from(
    [
        "task-sent",
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
        "task-retried",
        "task-revoked",
        "task-rejected",
        "task-progress",
        "task-custom_9",
        "task-<script>",
        "task-success",
        "worker-online",
        "worker-heartbeat",
        "worker-offline",
        "worker-dance",
        "scheduler-tick",
    ]
)
GOOD_TIME = st.floats(NOW - 3600, NOW + 3600)
ODD_TIMES = st.one_of(st.floats(1, 1e12), TEXT, BIG_NUMBERS)
GOOD_IDS = st.one_of(
    st.uuids().map(str),
    st.sampled_from(["t1", "t2", "a:timeline", "a:children", "x" * 255, "€" * 200]),
)
GOOD_HOSTS = st.sampled_from(["w1@h", "w2@h", ""])


@st.composite
def events(draw, field_values=VALUES):
    """An event dict: usually a plausible envelope, with hostile fields mixed in."""
    event = draw(st.dictionaries(FIELD_NAMES, field_values, max_size=8))
    if draw(st.booleans()):
        event.update({f"x{i}": "v" for i in range(draw(st.integers(0, 400)))})
    event.update(draw(OWNED_EXTRAS))
    event.update(
        type=draw(st.one_of(TYPE_NAMES, TYPE_NAMES, field_values)),
        uuid=draw(st.one_of(GOOD_IDS, GOOD_IDS, TEXT, field_values)),
        timestamp=draw(st.one_of(GOOD_TIME, GOOD_TIME, ODD_TIMES, field_values)),
        hostname=draw(st.one_of(GOOD_HOSTS, GOOD_HOSTS, TEXT, field_values)),
    )
    if draw(st.integers(0, 4)) == 0:  # sometimes leave an envelope key out
        event.pop(draw(st.sampled_from(["type", "uuid", "timestamp", "hostname"])))
    return event


BODIES = st.one_of(events(), st.lists(events(), max_size=4), VALUES)
WIRE_BODIES = st.one_of(events(WIRE_VALUES), st.lists(events(WIRE_VALUES), max_size=4), WIRE_VALUES)


# -- wire format --------------------------------------------------------------
COMPRESSORS = {
    "zlib": zlib.compress,
    "application/x-gzip": zlib.compress,
    "application/x-bz2": bz2.compress,
    "xz": lzma.compress,
}


@st.composite
def envelopes(draw):
    """What a Redis broker's pub/sub carries: kombu's JSON envelope, or junk."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    text = wire_json(draw(WIRE_BODIES))
    if draw(st.integers(0, 9)) == 0:
        text = text[: draw(st.integers(0, len(text)))]  # cut short
    body = text.encode()
    headers: dict = {}
    compression = draw(st.sampled_from([None, None, *COMPRESSORS, "snappy", 5]))
    if compression is not None:
        headers["compression"] = compression
        if compression in COMPRESSORS and draw(st.booleans()):
            if draw(st.booleans()):
                body = body + b" " * draw(st.sampled_from([0, 10, CAP]))  # past the cap
            body = COMPRESSORS[compression](body)
    encoded = base64.b64encode(body).decode()
    if draw(st.integers(0, 9)) == 0:
        encoded = draw(st.text(max_size=20))  # not base64
    envelope = {
        "body": encoded,
        "content-type": draw(
            st.sampled_from(["application/json"] * 4 + ["application/x-yaml", None, 5])
        ),
        "content-encoding": draw(st.sampled_from(["utf-8", "utf-8", "binary", "utf-99", None])),
        "headers": headers,
        "properties": {"body_encoding": "base64", "delivery_tag": "x"},
    }
    if draw(st.integers(0, 19)) == 0:
        envelope[draw(st.sampled_from(["headers", "properties"]))] = draw(WIRE_VALUES)
    return wire_json(envelope).encode()


# -- checks ----------------------------------------------------------------------
STATE = re.compile(r"[A-Z0-9_]{1,64}")


def decoded_events(body):
    return body if isinstance(body, list) else [body]


def build(event):
    """The model's record for ``event``, or None; MalformedEvent is the only error."""
    try:
        return TaskEvent.from_celery_event(event)
    except MalformedEvent:
        return None


def check_record(record):
    """A record the model returns fits what the store takes."""
    assert math.isfinite(record.timestamp) and record.timestamp > 0
    if isinstance(record, WorkerEvent):
        assert record.hostname and model._fits_label(record.hostname)
        low, high = model.FREQ_RANGE
        assert low <= record.fields.get("freq", low) <= high
        for value in record.fields.values():
            assert type(value) in (str, int, float, list)
        return
    assert isinstance(record, TaskEvent)
    assert model.usable_task_id(record.task_id)
    assert record.state in model.KNOWN_STATES or STATE.fullmatch(record.state)
    assert record.hostname is None or model._fits_label(record.hostname)
    assert len(record.fields) < 256
    for key, value in record.fields.items():
        assert type(key) is str
        assert type(value) in (str, int, float), (key, value)  # no containers, no bools
        if type(value) is float:
            assert math.isfinite(value)
        assert not model.store_owned(key) or key.endswith("_truncated"), key
        assert value not in FORGED, key


def check_stored(store, records, now):
    """What the store holds for ``records`` is inside the schema."""
    latest = now + getattr(store.settings, "clock_skew", math.inf)
    for record in records:
        if isinstance(record, WorkerEvent):
            score = store.redis.zscore(store.keys.workers, record.hostname)
            assert score is None or (math.isfinite(score) and score <= latest), score
            continue
        fields = store.redis.hgetall(store.keys.task(record.task_id))
        if not fields:
            continue  # trimmed, or a record the script declined (counted)
        state = fields["state"]
        assert state in model.KNOWN_STATES or STATE.fullmatch(state), state
        for key, value in fields.items():
            if model.store_owned(key):
                assert value not in FORGED, (key, value)
        for key in (store.keys.tasks, store.keys.by_state(state)):
            score = store.redis.zscore(key, record.task_id)
            assert score is not None and math.isfinite(score) and score <= latest, (key, score)


def apply(store, records):
    result = store.apply(records, now=NOW)
    assert getattr(result, "rejected", 0) == 0, "the store refused a record the model built"


# -- properties ------------------------------------------------------------------
@PROPERTY
@given(payload=envelopes())
def test_any_envelope_decodes_or_raises_undecodable_message_only(store, payload):
    try:
        body = redis_fanout.decode(payload, CAP)
    except redis_fanout.UndecodableMessage:
        return
    records = [r for r in map(build, decoded_events(body)) if r is not None]
    for record in records:
        check_record(record)
    apply(store, records)
    check_stored(store, records, NOW)


@PROPERTY
@given(
    body=st.one_of(st.binary(max_size=100), st.text(max_size=100), WIRE_BODIES.map(wire_json)),
    content_type=st.sampled_from(["application/json", "application/x-yaml", None, 1]),
    content_encoding=st.sampled_from(["utf-8", "binary", "latin-1", "nope", None, 1]),
    compression=st.sampled_from([None, "zlib", "bzip2", "lzma", "brotli", 7]),
)
def test_any_body_decodes_or_raises_undecodable_message_only(
    body, content_type, content_encoding, compression
):
    try:
        decoded = redis_fanout.decode_body(body, content_type, content_encoding, compression, CAP)
    except redis_fanout.UndecodableMessage:
        return
    for event in decoded_events(decoded):
        record = build(event)
        if record is not None:
            check_record(record)


@PROPERTY
@given(event=events(VALUES | TAGGED))
def test_any_event_dict_gives_a_record_in_the_schema_or_malformed_event(store, event):
    record = build(event)
    if record is None:
        return
    check_record(record)
    apply(store, [record])
    check_stored(store, [record], NOW)


@hsettings(PROPERTY, max_examples=100)  # up to 6 events each
@given(batch=st.lists(events(), min_size=1, max_size=6))
def test_a_batch_of_hostile_events_is_stored_whole_and_in_the_schema(store, batch):
    task_id = str(uuid.uuid4())  # one task, many reports: merges, timeline, precedence
    records = []
    for event in batch:
        if str(event.get("type")).startswith("task-"):
            event["uuid"] = task_id
        record = build(event)
        if record is not None:
            check_record(record)
            records.append(record)
    if records:
        apply(store, records)
        check_stored(store, records, NOW)


def test_kwargs_given_as_a_mapping_are_still_redacted(store):
    """The model turns a kombu-tagged kwargs dict into JSON text; the store's
    redaction must still hide the secret in it."""
    record = TaskEvent.from_celery_event(
        {
            "type": "task-received",
            "uuid": "redact-me",
            "timestamp": NOW,
            "hostname": "w1",
            "kwargs": {"password": "hunter2", "user": "u", "n": [1, 2]},
        }
    )
    apply(store, [record])
    stored = store.get_task("redact-me")["kwargs"]
    assert "hunter2" not in stored and "user" in stored
