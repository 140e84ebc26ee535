"""The API's most expensive requests at 1,000,000 stored tasks: server time, memory, and
what they cost an ordinary client while another client loops them.

Against a real ``monitor serve --no-events`` process:

1. each request of :data:`WORST` a few times from a keep-alive client: wall time,
   the server's own time (its ``Server-Timing`` header) and the serve process's
   memory: RSS growth (``VmRSS`` before and after) and peak during the request
   (``VmHWM`` after resetting it through ``/proc/<pid>/clear_refs``).
   Target: every request within 1 s of server time and 50 MB of memory.
2. an ordinary client's ``GET /api/v1/tasks?limit=50`` p50/p95, idle, then while
   a second client (a process of its own) loops over :data:`WORST`.
   Target: p95 under attack within 2x of idle.

By default it starts a private redis-server on a free port, fills it
(bench.fill_store; 1,000,000 tasks take about two minutes) and stops it at the
end. ``--redis URL --prefix P`` reuses a store filled before (nothing deleted):

    python -m bench.bench_attack [--tasks 1000000] [--requests 400]
    python -m bench.fill_store --tasks 1000000 --prefix bench-1m --redis redis://127.0.0.1:PORT/0
    python -m bench.bench_attack --redis redis://127.0.0.1:PORT/0 --prefix bench-1m
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from bench.fill_store import NAMES, WORKERS, bench_settings, fill
from monitor.store import Store, redis_client
from tests.helpers import (
    RedisServer,
    clean_env,
    free_port,
    http_get,
    start_serve,
    stop_process,
    wait_for,
)

TARGET_SECONDS = 1.0
TARGET_MB = 50.0
TARGET_RATIO = 2.0
ORDINARY = "/api/v1/tasks?limit=50"
RARE = NAMES[-1]  # 3 % of the tasks
#: (label, path): the requests a hostile or careless client would loop.
WORST = [
    ("flower search, huge offset", "/api/tasks?search=-&offset=100000000"),
    ("flower 2 states, huge offset", "/api/tasks?state=SUCCESS,FAILURE&offset=50000000"),
    ("flower 2 states, offset 500k", "/api/tasks?state=SUCCESS,FAILURE&offset=500000&limit=100"),
    ("flower, no limit (5,000 rows)", "/api/tasks"),
    ("flower sort_by=-runtime", "/api/tasks?sort_by=-runtime&limit=100"),
    (
        "flower state+name scan, offset",
        f"/api/tasks?state=FAILURE&taskname={RARE}&offset=100000",
    ),
    ("flower received range + search", "/api/tasks?received_start=2000-01-01 00:00&search=zz"),
    ("v1 search, nothing matches", "/api/v1/tasks?q=zzzz-none&limit=1000"),
    (
        "v1 state+name+worker scan",
        f"/api/v1/tasks?state=RETRY&name={RARE}&worker={WORKERS[3]}&limit=1000",
    ),
    (
        "v1 4 states merged, 1000 rows",
        "/api/v1/tasks?state=SUCCESS,FAILURE,STARTED,RETRY&limit=1000",
    ),
    ("v1 unfiltered, 1000 rows", "/api/v1/tasks?limit=1000"),
    ("v1 forged cursor, 2 states", "/api/v1/tasks?state=SUCCESS,FAILURE&cursor=1e11~10000"),
    ("v1 stats, 24 h", "/api/v1/stats?minutes=1440"),
    ("flower workers refresh", "/api/workers?refresh=1"),
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0; needs to own the process)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _server_ms(response: requests.Response) -> float | None:
    timing = response.headers.get("Server-Timing", "")
    _, _, dur = timing.partition("dur=")
    try:
        return float(dur)
    except ValueError:
        return None


def measure_worst(base: str, pid: int, rounds: int) -> list[dict[str, Any]]:
    session = requests.Session()
    results = []
    for label, path in WORST:
        wall, server, grown, peak, status, size = [], [], [], [], 0, 0
        for _ in range(rounds):
            before = _kb(pid, "VmRSS")
            peak_ok = _reset_peak(pid)
            t = time.perf_counter()
            response = session.get(base + path, timeout=30)
            wall.append(time.perf_counter() - t)
            server.append(_server_ms(response) or float("nan"))
            grown.append((_kb(pid, "VmRSS") - before) / 1024)
            peak.append((_kb(pid, "VmHWM") - before) / 1024 if peak_ok else float("nan"))
            status, size = response.status_code, len(response.content)
        results.append(
            {
                "label": label,
                "status": status,
                "bytes": size,
                "wall": max(wall),
                "server": max(server) / 1000,
                "grown": max(grown),
                "peak": max(peak),
            }
        )
    return results


def report_worst(results: list[dict[str, Any]]) -> None:
    print(
        f"\n{'request':<34}{'status':>7}{'bytes':>11}{'wall s':>8}{'server s':>9}"
        f"{'RSS +MB':>9}{'peak +MB':>9}"
    )
    for r in results:
        print(
            f"{r['label']:<34}{r['status']:>7}{r['bytes']:>11,}{r['wall']:>8.3f}"
            f"{r['server']:>9.3f}{r['grown']:>9.1f}{r['peak']:>9.1f}"
        )
    # A refresh waits for the workers' replies (the inspect timeout): its time
    # is a wait, not work, and is shown apart.
    work = [r for r in results if "refresh" not in r["label"]]
    worst_time = max(work, key=lambda r: r["server"])
    worst_peak = max(results, key=lambda r: r["peak"])
    verdict = "ok" if worst_time["server"] <= TARGET_SECONDS else "MISSED"
    print(
        f"worst server time {worst_time['server']:.3f} s ({worst_time['label']}),"
        f" target <= {TARGET_SECONDS:.0f} s: {verdict}"
    )
    verdict = "ok" if worst_peak["peak"] <= TARGET_MB else "MISSED"
    print(
        f"worst memory peak +{worst_peak['peak']:.1f} MB ({worst_peak['label']}),"
        f" target <= {TARGET_MB:.0f} MB: {verdict}"
    )


def ordinary_latencies(base: str, n: int) -> list[float]:
    session = requests.Session()
    for _ in range(10):
        session.get(base + ORDINARY)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        response = session.get(base + ORDINARY, timeout=30)
        times.append((time.perf_counter() - t) * 1000)
        response.raise_for_status()
    return times


def attacker(base: str, paths: list[str], started: Any, stop: Any, count: Any) -> None:
    """A second client looping over ``paths`` until told to stop."""
    session = requests.Session()
    started.set()
    while not stop.is_set():
        for path in paths:
            if stop.is_set():
                break
            session.get(base + path, timeout=30)
            with count.get_lock():
                count.value += 1


def under_attack(
    base: str, paths: list[str], phases: int, per_phase: int
) -> tuple[list[float], list[float], int]:
    """Ordinary latencies idle and while a second process loops ``paths``, in
    alternating phases (the machine's other load then weighs on both alike)."""
    idle: list[float] = []
    loaded: list[float] = []
    attacks = 0
    for _ in range(phases):
        idle += ordinary_latencies(base, per_phase)
        started, stop = multiprocessing.Event(), multiprocessing.Event()
        count = multiprocessing.Value("i", 0)
        attack = multiprocessing.Process(
            target=attacker, args=(base, paths, started, stop, count), daemon=True
        )
        attack.start()
        if not started.wait(30):
            raise RuntimeError("the attacking client did not start")
        time.sleep(0.05)  # its first request is in flight
        try:
            loaded += ordinary_latencies(base, per_phase)
        finally:
            stop.set()
            attack.join(60)
        attacks += count.value
    return idle, loaded, attacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=400, help="ordinary requests per phase")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each worst request")
    parser.add_argument("--phases", type=int, default=4, help="idle/attack phase pairs")
    parser.add_argument(
        "--each", action="store_true", help="also the ratio with each worst request alone"
    )
    parser.add_argument("--skip-worst", action="store_true", help="only the latency part")
    parser.add_argument("--redis", help="a Redis holding --prefix already (nothing is deleted)")
    parser.add_argument("--prefix", default=None)
    args = parser.parse_args()
    redis_server = None
    proc = None
    fill_store = None
    try:
        if args.redis:
            redis_url, prefix = args.redis, args.prefix or "bench-1m"
        else:
            redis_server = RedisServer().start()
            redis_url, prefix = redis_server.url, "bench-attack"
            settings = bench_settings(redis_url, prefix, args.tasks)
            fill_store = Store(redis_client(redis_url, socket_timeout=120), settings)
            print(f"filling {args.tasks:,} tasks into a private redis-server ...", flush=True)
            print(f"filled in {fill(fill_store, args.tasks):.0f}s", flush=True)
        probe = redis_client(redis_url)
        stored = probe.zcard(f"{prefix}:tasks")
        probe.close()
        port = free_port()
        proc = start_serve(
            redis_url,
            prefix,
            port,
            env=clean_env(MONITOR_MAX_TASKS=str(max(stored * 2, 1000))),
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            response = http_get(base + "/api/v1/task-names")
            return response is not None and response.ok

        wait_for(up, 60, 0.2, "serve")
        rss = _kb(proc.pid, "VmRSS") / 1024
        print(f"{stored:,} tasks stored; serve pid {proc.pid}, RSS {rss:.0f} MB")

        if not args.skip_worst:
            report_worst(measure_worst(base, proc.pid, args.rounds))

        phases = max(1, args.phases)
        per_phase = max(20, args.requests // phases)
        idle, loaded, attacks = under_attack(base, [p for _, p in WORST], phases, per_phase)
        p50_idle, p95_idle = statistics.median(idle), percentile(idle, 0.95)
        p50_load, p95_load = statistics.median(loaded), percentile(loaded, 0.95)
        ratio = p95_load / p95_idle
        print(
            f"\nordinary client GET {ORDINARY}: {len(idle)} requests idle and {len(loaded)}"
            f" under attack, in {phases} alternating phases"
        )
        print(f"  idle:         p50 {p50_idle:6.1f} ms  p95 {p95_idle:6.1f} ms")
        print(
            f"  under attack: p50 {p50_load:6.1f} ms  p95 {p95_load:6.1f} ms  "
            f"({attacks} worst requests meanwhile)"
        )
        print(
            f"  p95 ratio {ratio:.2f}x, target <= {TARGET_RATIO:.0f}x: "
            f"{'ok' if ratio <= TARGET_RATIO else 'MISSED'}"
        )
        if args.each:
            print("\np95 ratio with the attacker looping one request only:")
            for label, path in WORST:
                idle, loaded, attacks = under_attack(base, [path], 2, per_phase // 2)
                ratio = percentile(loaded, 0.95) / percentile(idle, 0.95)
                print(f"  {label:<34}{ratio:6.2f}x  ({attacks} requests)")
        print(f"serve RSS at the end: {_kb(proc.pid, 'VmRSS') / 1024:.0f} MB")
    finally:
        if proc is not None:
            stop_process(proc)
        if fill_store is not None:
            fill_store.close()
        if redis_server is not None:
            redis_server.stop()


if __name__ == "__main__":
    main()
