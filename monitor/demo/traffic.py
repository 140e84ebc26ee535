"""The demo's producer: a separate process that sends a realistic task mix.

``monitor demo`` runs it as ``python -m monitor.demo.traffic --rate R``, the way
a user's Flask app publishes tasks from its own process (the hooks record
PENDING here). It runs apart from the dashboard on purpose: Celery's Redis
result backend subscribes to every sent task's result and unsubscribes when
the ``AsyncResult`` is garbage collected, which inside the dashboard's gevent
hub could run on a greenlet that is being finalized at exit. Stopped by
SIGTERM or SIGINT; it finishes the send in progress and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import logging
import random
import signal
import threading

logger = logging.getLogger("monitor.demo")


def send_traffic(stop: threading.Event, rate: float = 2.0) -> None:
    """Send a realistic mix of tasks until ``stop`` is set."""
    from celery import chain, chord, group

    from . import app as d

    senders = [
        (30, lambda: d.add.delay(random.randint(1, 100), random.randint(1, 100))),
        (10, lambda: d.resize_image.delay(f"/uploads/img_{random.randint(1, 9999)}.png")),
        (
            15,
            lambda: d.send_email.delay(
                f"user{random.randint(1, 500)}@example.com", "Your invoice", password="s3cret"
            ),
        ),
        (10, lambda: d.sync_account.delay(random.randint(1, 1000))),
        (5, lambda: d.generate_report.delay(rows=random.randint(10, 30))),
        (5, lambda: chain(d.add.s(1, 2), d.add.s(3), d.add.s(4)).delay()),
        (5, lambda: group(d.add.s(i, i) for i in range(4)).delay()),
        (3, lambda: chord([d.add.s(i, 1) for i in range(3)], d.xsum.s()).delay()),
        (2, lambda: d.add.apply_async((1, 1), countdown=30)),  # visible as PENDING
    ]
    weights = [w for w, _ in senders]
    while not stop.is_set():
        _, send = random.choices(senders, weights)[0]
        try:
            send()
        except Exception:  # a demo keeps going; say what happened
            logger.exception("demo: sending a task failed")
        stop.wait(random.expovariate(rate))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m monitor.demo.traffic")
    parser.add_argument("--rate", type=float, default=2.0, help="tasks sent per second")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    send_traffic(stop, args.rate)
    # Result objects caught in reference cycles unsubscribe now, while the
    # interpreter and the result consumer's connection are whole; the rest do
    # at exit, on this plain (not gevent) thread, where that is safe.
    gc.collect()


if __name__ == "__main__":
    main()
