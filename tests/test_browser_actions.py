"""Operator actions in a real browser: Debian's chromium driven by Playwright, against a
real ``monitor serve`` with users, a real Redis and real prefork workers.

An operator logs in through the login page and acts from the pages (retry, worker
controls, purge, bulk, shutdown); a viewer sees no action button at all; every
page honours the Content-Security-Policy (no violation reported, by the console or
by ``securitypolicyviolation`` events); a form posted from another origin with the
operator's session cookie is refused and nothing runs.

Screenshots for a human to look at go to ``$TMPDIR/monitor-screenshots``.
"""

from __future__ import annotations

import http.server
import re
import threading
import uuid
from pathlib import Path

import pytest
import redis as redis_lib
from celery import Celery

import monitor.signals
from monitor.audit import AuditLog
from monitor.auth import AuthStore
from monitor.config import Settings
from monitor.store import Store, redis_client

from . import helpers
from .helpers import (
    CSP_PROBE,
    REDIS_URL,
    REVIEW_SHOTS,
    ServeProcess,
    WorkerProcess,
    chromium,
    open_page,
    require_chromium,
    require_service,
    shot,
    wait_for,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: A broker database of this module's own: control broadcasts reach every worker on
#: a broker, and other modules run workers of their own.
BROKER = "redis://127.0.0.1:6379/14"
T = "tests.workerapp."
OPERATOR = ("olga", "olga-operator-pw")
VIEWER = ("victor", "victor-viewer-pw")


class Cluster:
    """The store, users, a serve process, one worker, the producer app (hooks on)."""

    def __init__(self) -> None:
        self.prefix = "mba-" + uuid.uuid4().hex[:8]
        self.queue = f"q-{self.prefix}"
        self.settings = Settings(redis_url=REDIS_URL, prefix=self.prefix)
        self.store = Store(redis_client(REDIS_URL), self.settings)
        self.auth = AuthStore(self.store.redis, self.store.keys, self.settings)
        self.auth.add_user(*OPERATOR, role="operator")
        self.auth.add_user(*VIEWER, role="viewer")
        self.audit = AuditLog(self.store.redis, self.store.keys, self.settings)
        self.serve = ServeProcess(REDIS_URL, self.prefix, broker=BROKER, ready_path="/login")
        self.worker = WorkerProcess(
            broker=BROKER,
            queue=self.queue,
            prefix=self.prefix,
            hooks=True,
            events=True,
            hostname=f"ops-worker@{self.prefix}",
            extra_env={"TEST_POOL_RESTARTS": "1"},
            log_path=Path(f"/tmp/monitor-test-browser-actions-{self.prefix}.log"),
        )
        self.app = Celery("producer", broker=BROKER)
        self.app.conf.update(
            task_default_queue=self.queue,
            task_send_sent_event=True,
            broker_connection_retry_on_startup=True,
        )
        monitor.signals.connect(self.app, redis_url=REDIS_URL, prefix=self.prefix)

    @property
    def url(self) -> str:
        return self.serve.url

    @property
    def host(self) -> str:
        return self.worker.hostname

    def send(self, name: str, *args, **options):
        return self.app.send_task(T + name, args, **options)

    def final(self, task_id: str, states=("SUCCESS", "FAILURE", "REVOKED"), timeout=60.0):
        return wait_for(
            lambda: (t := self.store.get_task(task_id)) and t["state"] in states and t,
            timeout,
            0.1,
            what=f"task {task_id} in {states}",
        )

    def pool_size(self, host: str) -> int:
        stats = self.app.control.inspect(timeout=2, destination=[host]).stats() or {}
        return len(stats.get(host, {}).get("pool", {}).get("processes", []))

    def active_queues(self, host: str) -> set[str]:
        found = self.app.control.inspect(timeout=2, destination=[host]).active_queues() or {}
        return {q["name"] for q in found.get(host, [])}

    def close(self) -> None:
        monitor.signals.disconnect()
        self.app.close()
        self.worker.stop()
        self.serve.stop()
        self.store.delete_all()
        self.store.close()
        broker = redis_lib.Redis.from_url(BROKER)
        for key in broker.scan_iter(match=f"*{self.prefix}*"):
            broker.delete(key)
        broker.close()
        self.worker.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def cluster():
    require_service("127.0.0.1", 6379, "Redis")
    require_chromium()
    cluster = Cluster()
    try:
        cluster.serve.start()
        cluster.worker.start()
        with chromium() as cluster.browser:
            yield cluster
    finally:
        cluster.close()


def new_page(cluster, user=None):
    """A page in a fresh browser context (its own cookies), logged in as ``user``
    through the login page; it records errors and CSP violations."""
    page = open_page(cluster.browser, 1366, 900, init_script=CSP_PROBE)
    page.csp = []

    def console(msg):
        if "Content Security Policy" in msg.text or "Content-Security-Policy" in msg.text:
            page.csp.append(msg.text)

    page.on("console", console)
    page.refused = []  # the URLs the console's "Failed to load resource" lines are about
    page.on("response", lambda r: r.status >= 400 and page.refused.append(f"{r.status} {r.url}"))
    if user is not None:
        log_in(page, cluster.url, user)
    return page


def log_in(page, url, user, next_path="/"):
    helpers.log_in(page, url, user, next_path)
    assert page.locator(".who-name").inner_text() == user[0]


@pytest.fixture
def operator(cluster):
    page = new_page(cluster, OPERATOR)
    yield page
    page.context.close()


@pytest.fixture
def viewer(cluster):
    page = new_page(cluster, VIEWER)
    yield page
    page.context.close()


def live(page):
    page.wait_for_selector("#conn.conn-ok", timeout=20_000)


def violations(page) -> list[str]:
    return page.csp + page.evaluate("window.__csp || []")


def dialog(page):
    return page.locator("dialog[open]")


def confirm(page):
    dialog(page).locator("button[data-confirm]").click()


def close_dialog(page):
    dialog(page).locator(".dialog-cancel").click()
    page.wait_for_selector("dialog[open]", state="detached")


def expect_refused(page, status):
    """The console reports a request the test had refused on purpose: take that out."""
    line = f"status of {status}"
    wait_for(lambda: any(line in e for e in page.errors), 10, 0.1, what=f"a {status} reported")
    page.errors[:] = [e for e in page.errors if line not in e]


def navigations(page) -> int:
    return page.evaluate("performance.getEntriesByType('navigation').length")


def audit_entries(cluster, action, who=OPERATOR[0]):
    return [e for e in cluster.audit.list(limit=500)["entries"] if e["action"] == action]


# -- the tests -------------------------------------------------------------------------
def test_operator_logs_in_and_retries_a_failed_task_live(cluster, operator):
    page = operator
    # Fails after 4 s (its soft time limit); the rerun carries the same limit, so it
    # runs for 4 s on its own page before it fails again.
    original = cluster.send("sleep", 30, soft_time_limit=4)
    cluster.final(original.id, ("FAILURE",))
    page.goto(cluster.url + f"/task/{original.id}")
    live(page)
    retry = page.locator(".actions-bar button[data-action=retry]")
    retry.wait_for()
    assert retry.is_enabled()
    # Revoke and terminate are shown, disabled, with the reason as tooltip and text.
    revoke = page.locator(".actions-bar button[data-action=revoke]")
    assert revoke.is_disabled() and "FAILURE" in revoke.get_attribute("title")
    assert "Terminate:" in page.locator(".actions-bar .reasons").inner_text()
    shot(page, "action-task-page", directory=REVIEW_SHOTS)
    retry.click()
    box = dialog(page)
    box.wait_for()
    assert original.id in box.inner_text() and "tests.workerapp.sleep" in box.inner_text()
    assert "[30]" in box.locator("pre.dialog-args").inner_text()
    shot(page, "action-retry-dialog", directory=REVIEW_SHOTS)
    confirm(page)
    link = box.locator(".retried a")
    link.wait_for(timeout=20_000)
    new_id = link.inner_text()
    assert new_id != original.id and link.get_attribute("href").endswith(f"/task/{new_id}")
    shot(page, "action-retry-done", directory=REVIEW_SHOTS)
    close_dialog(page)
    # The original's page links the new task, and its state follows live.
    lineage = page.locator(".lineage .retried-as")
    lineage.wait_for()
    assert "(by olga)" in lineage.inner_text()
    page.wait_for_function(
        "id => [...document.querySelectorAll('.timeline-row, tr.retried-entry')]"
        ".some(r => r.textContent.includes('retried by olga') && r.textContent.includes(id))",
        arg=new_id,
        timeout=20_000,
    )
    # The rerun's state follows live on the original's page too.
    page.wait_for_function(
        "id => document.querySelector(`.lineage .live-state[data-task-id='${id}'] .badge`)"
        "?.textContent === 'STARTED'",
        arg=new_id,
        timeout=20_000,
    )
    shot(page, "action-task-retried", full_page=True, directory=REVIEW_SHOTS)
    # The rerun's own page: "retry of" the original, RUNNING, then FAILURE, no reload.
    lineage.locator("a").click()
    page.wait_for_url(f"**/task/{new_id}")
    live(page)
    page.locator(".lineage .retry-of a").wait_for()
    assert page.locator(".lineage .retry-of a").inner_text() == original.id
    seen = page.locator(".title-row .badge").first
    page.wait_for_function(
        "() => ['RECEIVED', 'STARTED'].includes("
        "document.querySelector('.title-row .badge')?.textContent)",
        timeout=20_000,
    )
    loads = navigations(page)
    page.wait_for_function(
        "() => document.querySelector('.title-row .badge')?.textContent === 'FAILURE'",
        timeout=30_000,
    )
    assert seen.inner_text() == "FAILURE" and navigations(page) == loads
    assert "SoftTimeLimitExceeded" in page.locator("main").inner_text()
    # Checked through the store and the audit log, not only the page.
    assert cluster.store.get_task(original.id)["retried_as"] == new_id
    assert cluster.store.get_task(new_id)["retry_of"] == original.id
    entries = audit_entries(cluster, "task.retry")
    assert any(e["target"] == original.id and e["ok"] and e["who"] == "olga" for e in entries)
    assert page.errors == [] and violations(page) == []


def test_a_viewer_sees_no_action_buttons(cluster, viewer):
    page = viewer
    failed = cluster.send("fail", "for the viewer")
    cluster.final(failed.id, ("FAILURE",))
    page.goto(cluster.url + f"/task/{failed.id}")
    live(page)
    page.wait_for_selector("text=Timeline")
    assert page.locator(".who-role").inner_text() == "viewer"
    # Absent, not disabled; and no "actions are off" line: they are on, not for viewers.
    assert page.locator("main button, dialog").count() == 0
    assert page.locator(".actions-bar, .refusal").count() == 0
    page.goto(cluster.url + f"/worker/{cluster.host}")
    page.locator(f'tr[data-queue="{cluster.queue}"]').wait_for(timeout=20_000)
    assert page.locator(".worker-actions, main button").count() == 0
    nav = page.locator("header nav").inner_text()
    assert "Bulk" not in nav and "Audit" not in nav
    assert page.errors == [] and violations(page) == []
    # What a viewer reaches by hand is refused (the console reports those 403s).
    assert page.goto(cluster.url + "/bulk").status == 403
    assert page.goto(cluster.url + "/audit").status == 403
    # A request made by hand with the viewer's session and CSRF token is refused too,
    # and nothing runs.
    page.goto(cluster.url + f"/task/{failed.id}")
    page.wait_for_selector("text=Timeline")
    status = page.evaluate(
        """id => fetch("/api/v1/tasks/" + id + "/retry", {method: "POST",
             headers: {"Content-Type": "application/json", "X-CSRFToken": JSON.parse(
               document.getElementById("monitor-config").textContent).csrf_token},
             body: "{}"}).then(r => r.status)""",
        failed.id,
    )
    assert status == 403
    assert "retried_as" not in cluster.store.get_task(failed.id)
    refused = [e for e in audit_entries(cluster, "task.retry") if e["target"] == failed.id]
    assert [(e["who"], e["ok"], e["status"]) for e in refused] == [("victor", False, 403)]
    assert violations(page) == []


def test_pages_say_why_when_actions_are_off_for_everyone(cluster):
    read_only = ServeProcess(
        REDIS_URL, cluster.prefix, "--read-only", broker=BROKER, ready_path="/login"
    ).start()
    page = new_page(cluster)
    try:
        log_in(page, read_only.url, OPERATOR)
        failed = cluster.send("fail", "read-only")
        cluster.final(failed.id, ("FAILURE",))
        for path in (f"/task/{failed.id}", f"/worker/{cluster.host}", "/bulk"):
            page.goto(read_only.url + path)
            line = page.locator(".refusal")
            line.wait_for()
            assert line.count() == 1 and "read-only" in line.inner_text()
            assert page.locator("main button, .actions-bar, .worker-actions").count() == 0
            if path.startswith("/task/"):
                shot(page, "action-read-only", directory=REVIEW_SHOTS)
        assert page.errors == [] and violations(page) == []
    finally:
        page.context.close()
        read_only.stop()


PAGES = ("/", "/tasks", "/task/{task}", "/workers", "/worker/{host}", "/bulk", "/audit", "/login")


def test_every_page_honours_the_content_security_policy(cluster, operator):
    page = operator
    # The probe sees violations: an inline style attribute is refused and reported.
    page.goto(cluster.url + "/tasks")
    page.evaluate("document.body.insertAdjacentHTML('beforeend', '<i style=\"color:red\">x</i>')")
    wait_for(lambda: violations(page), 10, what="the probe's own violation")
    page.csp.clear()
    page.errors.clear()
    # A task with a progress bar (its width is set through the CSSOM).
    task = cluster.send("progress", 3)
    cluster.final(task.id)
    for path in PAGES:
        response = page.goto(cluster.url + path.format(task=task.id, host=cluster.host))
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        assert "'unsafe-inline'" not in response.headers["content-security-policy"]
        page.wait_for_function("() => document.querySelector('#main').children.length > 0")
        if path != "/login":
            live(page)
        if path == "/task/{task}":
            page.wait_for_selector(".progress[aria-valuenow='100']")
            page.wait_for_selector(".actions-bar button")
        if path == "/worker/{host}":  # a dialog and the workers' replies drawn
            page.locator(".worker-actions button[data-action=pool-grow]").click()
            dialog(page).wait_for()
            close_dialog(page)
        if path == "/bulk":
            page.click("form.bulk-form button[type=submit]")
            page.wait_for_selector(".bulk-count")
        page.wait_for_load_state("networkidle")
        assert violations(page) == [], path
        assert page.errors == [], path


#: A page on another origin (another port) that posts to the monitor with whatever
#: cookies the browser holds for it: a form, and a fetch that needs no preflight.
EVIL_PAGE = """<!doctype html><html><body>
<form id="form" method="post" action="{action}">
  <input name="terminate" value="true"><input name="signal" value="SIGKILL">
  <button id="go" type="submit">win a prize</button>
</form>
<script>
function sneak(url) {{
  return fetch(url, {{method: "POST", mode: "no-cors", credentials: "include",
                      headers: {{"Content-Type": "text/plain"}}, body: "{{}}"}})
    .then(function () {{ return "sent"; }}, function (e) {{ return "failed " + e; }});
}}
</script>
</body></html>"""


class EvilSite:
    """An HTTP server on another port of 127.0.0.1 serving EVIL_PAGE."""

    def __init__(self, action: str) -> None:
        body = EVIL_PAGE.format(action=action).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the stdlib's name
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_cross_site_form_post_is_refused_and_nothing_runs(cluster, operator):
    page = operator  # holds the operator's session cookie for 127.0.0.1
    held = cluster.send("add", 20, 22, countdown=6)  # waits in the worker for its ETA
    cluster.final(held.id, ("RECEIVED",), timeout=30)
    targets = {
        "v1": f"{cluster.url}/api/v1/tasks/{held.id}/revoke",
        "flower": f"{cluster.url}/api/task/revoke/{held.id}",
    }
    for name, action in targets.items():
        evil = EvilSite(action)
        try:
            page.goto(evil.url)
            with page.expect_navigation() as navigation:
                page.click("#go")
            response = navigation.value
            assert response.status == 403, name
            assert "cross-site request refused" in page.locator("body").inner_text(), name
            page.goto(evil.url)
            assert page.evaluate("url => sneak(url)", action) == "sent"
        finally:
            evil.close()
    # The console reported those refusals (and the browser's favicon request next to
    # the JSON answer): what matters from here on is the monitor's own pages.
    page.errors.clear()
    # Same origin, the session cookie, no CSRF token: refused as well.
    page.goto(cluster.url + "/tasks")
    page.wait_for_selector("table.tasks")
    answer = page.evaluate(
        """id => fetch("/api/v1/tasks/" + id + "/revoke", {method: "POST",
             headers: {"Content-Type": "application/json"}, body: "{}"})
             .then(r => r.json().then(b => [r.status, b.error]))""",
        held.id,
    )
    assert answer[0] == 403 and "CSRF" in answer[1]
    assert len(page.errors) == 1 and "status of 403" in page.errors[0]
    page.errors.clear()
    # Nothing was revoked: the task runs at its ETA.
    assert cluster.final(held.id)["state"] == "SUCCESS"
    # The control: the same revoke from the monitor's own page, with its token, works.
    second = cluster.send("add", 1, 1, countdown=6)
    cluster.final(second.id, ("RECEIVED",), timeout=30)
    page.goto(cluster.url + f"/task/{second.id}")
    page.locator(".actions-bar button[data-action=revoke]").click()
    confirm(page)
    dialog(page).locator(f'tr.reply-ok[data-host="{cluster.host}"]').wait_for(timeout=20_000)
    assert cluster.final(second.id)["state"] == "REVOKED"
    assert page.errors == [] and violations(page) == []


def pick_reply(page, host):
    row = dialog(page).locator(f'tr.reply[data-host="{host}"]')
    row.wait_for(timeout=20_000)
    return row


def test_worker_page_actions_show_each_workers_reply(cluster, operator):
    page, host = operator, cluster.host
    page.goto(cluster.url + f"/worker/{host}")
    live(page)
    controls = page.locator(".worker-actions")
    page.wait_for_function(
        "() => / processes/.test(document.querySelector('.pool-line')?.textContent)",
        timeout=20_000,
    )
    before = cluster.pool_size(host)
    # grow by one, then shrink back
    controls.locator("input[name=n]").fill("1")
    controls.locator("button[data-action=pool-grow]").click()
    assert "Add 1 pool process on worker" in dialog(page).inner_text()
    confirm(page)
    reply = pick_reply(page, host)
    assert "ok" in reply.locator(".badge").inner_text()
    shot(page, "action-worker-reply", directory=REVIEW_SHOTS)
    close_dialog(page)
    wait_for(lambda: cluster.pool_size(host) == before + 1, 20, 0.5, what="pool grown")
    controls.locator("button[data-action=pool-shrink]").click()
    confirm(page)
    pick_reply(page, host)
    close_dialog(page)
    wait_for(lambda: cluster.pool_size(host) == before, 20, 0.5, what="pool shrunk")
    # a rate limit on a task the worker registered (the select lists them)
    page.wait_for_selector(
        "select[name=task_name] optgroup[label='registered on this worker']", state="attached"
    )
    controls.locator("select[name=task_name]").select_option(T + "stamp")
    controls.locator("input[name=rate]").fill("10/m")
    controls.locator("button[data-action=rate-limit]").click()
    assert "10/m" in dialog(page).inner_text()
    confirm(page)
    assert "rate limit" in pick_reply(page, host).inner_text()
    close_dialog(page)
    controls.locator("input[name=rate]").fill("")  # and off again
    controls.locator("button[data-action=rate-limit]").click()
    confirm(page)
    pick_reply(page, host)
    close_dialog(page)
    # time limits, with the note on when workers apply them; then that pool restart
    controls.locator("input[name=soft]").fill("5")
    controls.locator("input[name=hard]").fill("10")
    controls.locator("button[data-action=time-limit]").click()
    assert "5 s" in dialog(page).inner_text() and "10 s" in dialog(page).inner_text()
    confirm(page)
    assert "ok" in pick_reply(page, host).locator(".badge").inner_text()
    assert "pool restart" in dialog(page).locator(".note").inner_text()
    close_dialog(page)
    controls.locator("button[data-action=pool-restart]").click()
    confirm(page)
    assert "ok" in pick_reply(page, host).locator(".badge").inner_text()
    close_dialog(page)
    # autoscale: this worker was not started with --autoscale; its error, with the fix
    controls.locator("input[name=max]").fill("4")
    controls.locator("input[name=min]").fill("1")
    controls.locator("button[data-action=autoscale]").click()
    confirm(page)
    reply = pick_reply(page, host)
    assert "error" in reply.locator(".badge").inner_text()
    assert "--autoscale" in reply.inner_text()
    close_dialog(page)
    # a parameter the API refuses: its error in the dialog, which stays open
    controls.locator("input[name=n]").fill("0")
    controls.locator("button[data-action=pool-grow]").click()
    confirm(page)
    error = dialog(page).locator(".dialog-error")
    error.wait_for()
    assert "n must be between 1" in error.inner_text()
    close_dialog(page)
    expect_refused(page, 400)
    # add a consumer, see it in the queue list, cancel it from there
    extra = f"extra-{cluster.prefix}"
    controls.locator("input[name=queue]").fill(extra)
    controls.locator("button[data-action=add-consumer]").click()
    confirm(page)
    pick_reply(page, host)
    close_dialog(page)
    wait_for(lambda: extra in cluster.active_queues(host), 20, 0.5, what="consumer added")
    row = page.locator(f'tr[data-queue="{extra}"]')
    row.wait_for(timeout=20_000)
    shot(page, "action-worker-page", full_page=True, directory=REVIEW_SHOTS)
    row.locator("button[data-action=cancel-consumer]").click()
    confirm(page)
    pick_reply(page, host)
    close_dialog(page)
    wait_for(lambda: extra not in cluster.active_queues(host), 20, 0.5, what="consumer gone")
    row.wait_for(state="detached", timeout=20_000)
    assert page.errors == [] and violations(page) == []


def test_purge_shows_the_depth_and_shutdown_needs_the_workers_name(cluster, operator):
    page = operator
    queue = f"spare-{cluster.prefix}"
    spare = WorkerProcess(
        broker=BROKER,
        queue=queue,
        prefix=cluster.prefix,
        hooks=True,
        events=True,
        concurrency=1,
        hostname=f"spare@{cluster.prefix}",
        log_path=Path(f"/tmp/monitor-test-browser-actions-spare-{cluster.prefix}.log"),
    ).start()
    broker = redis_lib.Redis.from_url(BROKER)
    try:
        busy = cluster.send("hold", 5, queue=queue)
        cluster.final(busy.id, ("STARTED",))
        for i in range(6):  # one is prefetched; the rest wait in the queue
            cluster.send("add", i, i, queue=queue)
        wait_for(lambda: broker.llen(queue) >= 4, 10, 0.1, what="messages waiting")
        page.goto(cluster.url + f"/worker/{spare.hostname}")
        live(page)
        row = page.locator(f'tr[data-queue="{queue}"]')
        row.wait_for(timeout=20_000)
        row.locator("button[data-action=purge]").click()
        depth = dialog(page).locator(".queue-depth")
        page.wait_for_function(
            "() => /It holds [0-9]+ messages now/.test("
            "document.querySelector('dialog[open] .queue-depth')?.textContent)"
        )
        waiting = int(depth.inner_text().split()[2])
        assert waiting >= 4
        shot(page, "action-purge-dialog", directory=REVIEW_SHOTS)
        confirm(page)
        purged = dialog(page).locator(".purged")
        purged.wait_for()
        assert f"of {waiting} messages" in purged.inner_text()
        assert broker.llen(queue) == 0
        close_dialog(page)
        # Shut down: the button waits for the worker's name to be typed.
        page.locator("button[data-action=shutdown]").click()
        go = dialog(page).locator("button[data-confirm]")
        assert go.is_disabled()
        dialog(page).locator("input.typed").fill("spare")
        assert go.is_disabled()
        dialog(page).locator("input.typed").fill(spare.hostname)
        assert go.is_enabled()
        shot(page, "action-shutdown-dialog", directory=REVIEW_SHOTS)
        go.click()
        assert "shutdown requested" in pick_reply(page, spare.hostname).inner_text()
        close_dialog(page)
        wait_for(lambda: spare.proc.poll() is not None, 30, 0.2, what="the spare worker gone")
        # A worker that is gone shows as a timeout, not as a silent success.
        page.locator("input[name=n]").fill("1")
        page.locator("button[data-action=pool-grow]").click()
        confirm(page)
        timeout = pick_reply(page, spare.hostname)
        assert "timeout" in timeout.locator(".badge").inner_text()
        shot(page, "action-worker-timeout", directory=REVIEW_SHOTS)
        close_dialog(page)
        assert page.errors == [] and violations(page) == []
    finally:
        spare.stop()
        broker.close()
        spare.log_path.unlink(missing_ok=True)


#: Records every text the bulk page's progress bar shows.
WATCH_PROGRESS = """() => {
  window.__progress = [];
  new MutationObserver(() => {
    const t = document.querySelector('.bulk-progress .progress-text');
    if (t && window.__progress[window.__progress.length - 1] !== t.textContent)
      window.__progress.push(t.textContent);
  }).observe(document.querySelector('#main'), {subtree: true, childList: true,
                                               characterData: true});
}"""


def test_bulk_retry_dry_run_then_live_progress(cluster, operator):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = operator
    count = 300
    failed = [cluster.send("fail_quietly", i) for i in range(count)]
    for result in failed:
        cluster.final(result.id, ("FAILURE",))
    # From the tasks page's filter to the bulk page, the filter carried along.
    page.goto(cluster.url + f"/tasks?state=FAILURE&name={T}fail_quietly")
    page.click("a.bulk-link")
    page.wait_for_url("**/bulk?**")
    live(page)
    page.wait_for_selector(f"select[name=name] option[value='{T}fail_quietly']", state="attached")
    assert page.input_value("select[name=action]") == "retry"
    assert page.input_value("select[name=state]") == "FAILURE"
    assert page.input_value("select[name=name]") == T + "fail_quietly"
    page.click("form.bulk-form button[type=submit]")
    preview = page.locator(".bulk-count")
    preview.wait_for()
    assert preview.inner_text().startswith(f"{count} tasks match")
    sample = page.locator("ul.sample a")
    assert sample.count() == 20
    assert sample.first.get_attribute("href").startswith("/task/")
    shot(page, "action-bulk-dry-run", full_page=True, directory=REVIEW_SHOTS)
    page.click("button[data-action=bulk-run]")
    assert f"Retry the newest {count} tasks" in dialog(page).inner_text()
    page.evaluate(WATCH_PROGRESS)
    confirm(page)
    page.wait_for_selector("dialog[open]", state="detached")
    page.wait_for_selector(".bulk-progress .progress")
    try:  # a look at it mid-run, for a human, when the run is slow enough to catch
        page.wait_for_function(
            "() => /^[0-9,]+ \\/ [0-9,]+$/.test("
            "document.querySelector('.bulk-progress .progress-text')?.textContent)",
            polling="raf",
            timeout=5_000,
        )
        shot(page, "action-bulk-running", full_page=True, directory=REVIEW_SHOTS)
    except PlaywrightTimeout:
        pass
    done = page.locator(".bulk-done")
    done.wait_for(timeout=60_000)
    assert done.inner_text() == f"Retried {count} of {count} tasks."
    shot(page, "action-bulk-done", full_page=True, directory=REVIEW_SHOTS)
    seen = page.evaluate("window.__progress")
    assert seen[-1] == f"{count} / {count} · finished", seen
    # Socket.IO brought the progress as it went (25 tasks a step), not only the end.
    assert any(re.fullmatch(rf"\d+ / {count}", text) for text in seen), seen
    originals = {r.id for r in failed}
    assert all(cluster.store.get_task(i).get("retried_as") for i in originals)
    assert page.errors == [] and violations(page) == []


def test_audit_page_newest_first_with_paging_and_filters(cluster, operator):
    page = operator
    for i in range(60):
        cluster.audit.record(
            "seeder",
            "operator",
            "token",
            "test.seed",
            target=f"target-{i}",
            params={"i": i, "note": "<img src=x onerror=window.__pwned=1>"},
            addr="10.1.2.3",
            ok=i % 3 != 0,
            status=200 if i % 3 else 403,
            result={"n": i},
        )
    page.goto(cluster.url + "/audit?who=seeder")
    rows = page.locator("table.audit tbody tr")
    page.wait_for_selector("table.audit tbody tr[data-id]")
    assert rows.count() == 50
    first = rows.first.inner_text()
    assert "target-59" in first and "seeder" in first and "10.1.2.3" in first
    assert "test.seed" in first and '"i":59' in first
    assert rows.nth(1).locator(".audit-target").inner_text() == "target-58"
    refused = sum(1 for i in range(10, 60) if i % 3 == 0)  # the newest 50: 59 .. 10
    assert page.locator("tr.audit-row-refused .badge.audit-refused").count() == refused
    shot(page, "action-audit", full_page=True, directory=REVIEW_SHOTS)
    page.click("button.more")
    page.wait_for_function("() => document.querySelectorAll('table.audit tbody tr').length === 60")
    assert rows.last.locator(".audit-target").inner_text() == "target-0"
    assert page.locator("button.more").is_hidden()
    # filters: by action (the datalist offers the actions seen), by user
    page.fill("input[name=action]", "test.nothing")
    page.press("input[name=action]", "Enter")
    page.wait_for_url("**action=test.nothing**")
    page.wait_for_selector("table.audit tbody td.muted")
    assert "No entry matches." in page.locator("table.audit").inner_text()
    page.goto(cluster.url + "/audit?action=test.seed&who=nobody")
    page.wait_for_selector("table.audit tbody td.muted")
    assert page.evaluate("window.__pwned") is None
    assert page.errors == [] and violations(page) == []


def test_login_errors_and_logout(cluster):
    page = new_page(cluster)
    try:
        page.goto(cluster.url + "/tasks")  # anonymous, users exist: the login page
        page.wait_for_url("**/login?next=**")
        page.fill("input[name=name]", OPERATOR[0])
        page.fill("input[name=password]", "not the password")
        page.click("form.login button[type=submit]")
        assert "Wrong user name or password." in page.locator(".error").inner_text()
        assert page.locator(".who-name").count() == 0
        expect_refused(page, 401)  # the login page answers a wrong password with 401
        shot(page, "action-login", directory=REVIEW_SHOTS)
        page.fill("input[name=password]", OPERATOR[1])
        page.click("form.login button[type=submit]")
        page.wait_for_url("**/tasks")  # back where it was going
        assert page.locator(".who-name").inner_text() == "olga"
        assert page.locator(".who-role").inner_text() == "operator"
        page.click("form.logout button")
        page.wait_for_url("**/login**")
        page.goto(cluster.url + "/")
        page.wait_for_url("**/login?next=**")
        assert page.locator(".who-name").count() == 0
        assert page.errors == [] and violations(page) == []
    finally:
        page.context.close()
