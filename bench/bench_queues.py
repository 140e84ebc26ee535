"""What sampling many queues costs on a Redis broker.

A private redis-server as the broker; ``--queues`` queues (default 1,000)
with ``--steps`` priority steps and a few messages in some of them; then
``--rounds`` samples of every queue's depth and oldest message
(:func:`monitor.queues.redis_depths`, one pipeline). Prints the wall time of a
sample (median, worst), the broker's Redis CPU per sample (``INFO
commandstats`` usec of EVALSHA, which includes the LLEN/LINDEX inside) and the
commands per sample.

    python -m bench.bench_queues [--queues 1000] [--steps 4] [--rounds 20] [--amqp]

``--amqp``: the same on a private RabbitMQ node (passive declares on one channel).
"""

from __future__ import annotations

import argparse
import statistics
import time

import redis
from celery import Celery

from monitor import queues
from tests.helpers import RedisServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--amqp", action="store_true", help="a private RabbitMQ node instead")
    args = parser.parse_args()
    if args.amqp:
        amqp_bench(args)
        return
    server = RedisServer().start()
    try:
        steps = [round(i * 9 / max(args.steps - 1, 1)) for i in range(args.steps)]
        app = Celery("bench", broker=server.url)
        app.conf.broker_transport_options = {"priority_steps": steps}
        names = [f"bench-q-{i}" for i in range(args.queues)]
        with app.producer_or_acquire() as producer:
            for i, name in enumerate(names):
                for k in range(i % 3):
                    app.send_task("bench.nobody", queue=name, priority=9 * k, producer=producer)
        client = redis.Redis.from_url(server.url)
        with app.connection_for_read() as conn:
            broker, got_steps, sep, keyprefix = queues._redis_client(conn)
            queues.redis_depths(broker, names, got_steps, sep, keyprefix)  # loads the script
            client.config_resetstat()
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                queues.redis_depths(broker, names, got_steps, sep, keyprefix)
                times.append(time.perf_counter() - start)
        stats = client.info("commandstats")
        evalsha = stats.get("cmdstat_evalsha", {})
        calls = sum(v["calls"] for k, v in stats.items() if k != "cmdstat_config|resetstat")
        print(f"{args.queues} queues x {len(got_steps)} priority steps, {args.rounds} samples")
        print(
            f"wall per sample: median {statistics.median(times) * 1000:.1f} ms,"
            f" worst {max(times) * 1000:.1f} ms"
        )
        print(
            f"broker Redis per sample: {evalsha.get('usec', 0) / args.rounds / 1000:.1f} ms CPU,"
            f" {evalsha.get('calls', 0) // args.rounds} EVALSHA,"
            f" {calls // args.rounds} commands counted (script calls inside included)"
        )
    finally:
        server.stop()


def amqp_bench(args: argparse.Namespace) -> None:
    from tests.helpers import RabbitMQNode

    node = RabbitMQNode().start()
    try:
        app = Celery("bench", broker=node.url)
        names = [f"bench-q-{i}" for i in range(args.queues)]
        with app.producer_or_acquire() as producer:
            for i, name in enumerate(names):
                for _ in range(i % 3 or 1):
                    app.send_task("bench.nobody", queue=name, producer=producer)
        times = []
        with app.connection_for_read() as conn:
            for _ in range(args.rounds):
                start = time.perf_counter()
                got = queues.declare_depths(conn, names)
                times.append(time.perf_counter() - start)
        assert len(got) == len(names), "the budget ran out"
        print(f"{args.queues} AMQP queues, {args.rounds} samples (passive declares, one channel)")
        print(
            f"wall per sample: median {statistics.median(times) * 1000:.1f} ms,"
            f" worst {max(times) * 1000:.1f} ms"
        )
    finally:
        node.stop()


if __name__ == "__main__":
    main()
