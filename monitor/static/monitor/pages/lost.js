// The "Lost & risks" page: tasks lost with their worker, stuck tasks, Redis broker
// messages that will be redelivered or run twice, configuration risks
// (GET /api/v1/tasks?flag=lost|stuck, GET /api/v1/risks; monitor/lost.py).
(window.MonitorPages = window.MonitorPages || {}).lost = function (M) {
  "use strict";
  var h = M.h, main = M.main;
  var lostHolder = h("div"), stuckHolder = h("div"), brokerHolder = h("div"),
      riskHolder = h("div");
  M.clear(main);
  M.append(main, [
    h("div", {class: "title-row"}, h("h1", {text: "Lost & risks"})),
    h("p", {class: "muted", text: "Flags, not states: a lost task keeps the state Celery " +
      "last reported; its worker stopped sending heartbeats."}),
    riskHolder, lostHolder, stuckHolder, brokerHolder]);

  function flagBadges(row) {
    var out = [];
    if (row.lost) out.push(h("span", {class: "badge state-lost flag", text: "lost",
      title: "its worker is offline: this task may be lost"}));
    if (row.stuck) out.push(h("span", {class: "badge flag-stuck flag", text: "stuck",
      title: row.stuck_reason || "stuck"}));
    return out;
  }
  function taskTable(title, body, withReason) {
    var rows = Array.isArray(body.tasks) ? body.tasks : [];
    var columns = ["State", "Flag", "Name", "Task id", "Worker", "Started"];
    if (withReason) columns.push("Why");
    var trs = rows.map(M.safeRow(function (row) {
      return h("tr", {"data-id": row.id, class: "flag-row"},
        h("td", null, M.badge(row.state)),
        h("td", null, flagBadges(row)),
        h("td", {class: "name", text: row.name || "—"}),
        h("td", {class: "mono"}, M.taskLink(row.id)),
        h("td", null, row.worker ? M.workerLink(row.worker) : "—"),
        h("td", null, M.fmtTime(row.started || row.received || row.timestamp)),
        withReason ? h("td", {class: "reason", text: row.stuck_reason || ""}) : null);
    }, columns.length));
    var more = body.next_cursor ? h("p", {class: "muted", text: "scanned " +
      M.fmtNum(body.scanned) + " running tasks; more beyond (see the Tasks page filter)"}) : null;
    return M.section(title + " (" + rows.length + (body.next_cursor ? "+" : "") + ")",
      rows.length ? M.table(columns, trs) : h("p", {class: "muted", text: "none"}), more);
  }
  function entryTable(entries, extra) {
    var columns = ["Task id", "Name", "Delivered", "Age"].concat(extra.map(function (e) {
      return e[0]; }));
    return M.table(columns, entries.map(M.safeRow(function (e) {
      return h("tr", {"data-id": e.task_id || ""},
        h("td", {class: "mono"}, e.task_id ? M.taskLink(e.task_id) : "—"),
        h("td", {class: "name", text: e.name || "—"}),
        h("td", null, M.fmtTime(e.delivered)),
        h("td", {class: "num", text: M.fmtDuration(e.age)}),
        extra.map(function (x) { return h("td", null, x[1](e)); }));
    }, columns.length)));
  }
  function drawRisks(report) {
    M.clear(riskHolder);
    M.clear(brokerHolder);
    var risks = Array.isArray(report.risks) ? report.risks : [];
    M.append(riskHolder, M.section("Risks", risks.length ? h("ul", {class: "risks"},
      risks.map(function (r) {
        return h("li", {class: "risk"}, h("strong", {text: String(r.where || "")}), ": ",
          String(r.message || r.kind || ""));
      })) : h("p", {class: "muted", text: "no configuration risk seen" +
        (report.workers_asked && report.workers_asked.length ? "" :
          " (no worker's conf known yet)")})));
    var b = report.broker || {};
    var unacked = report.unacked;
    M.append(brokerHolder, M.section("Broker", M.kv([
      ["Transport", b.transport || "unknown"],
      ["Visibility timeout", b.visibility_timeout !== undefined ?
        M.fmtDuration(b.visibility_timeout) + " (" + (b.visibility_timeout_source || "?") + ")" :
        null],
      ["Unacked messages", unacked ? M.fmtNum(unacked.count) + (unacked.read < unacked.count ?
        " (oldest " + M.fmtNum(unacked.read) + " read)" : "") : null],
      ["Error", report.error || null]])));
    if (b.transport !== "redis") return;
    var redelivery = Array.isArray(report.redelivery) ? report.redelivery : [];
    M.append(brokerHolder, M.section("Will be redelivered (" + redelivery.length + ")",
      h("p", {class: "muted", text: "Delivered, not acknowledged, for longer than the " +
        "visibility timeout: the next consumer that restores unacked messages puts them " +
        "back in their queue."}),
      redelivery.length ? entryTable(redelivery, [["Overdue", function (e) {
        return M.fmtDuration(e.overdue); }]]) : h("p", {class: "muted", text: "none"})));
    var eta = Array.isArray(report.eta_beyond_visibility) ? report.eta_beyond_visibility : [];
    M.append(brokerHolder, M.section("ETA beyond the visibility timeout (" + eta.length + ")",
      h("p", {class: "muted", text: "Their ETA is further from their delivery than the " +
        "visibility timeout: they are redelivered before they run, and run twice."}),
      eta.length ? entryTable(eta, [["ETA", function (e) { return M.fmtTime(e.eta); }]]) :
        h("p", {class: "muted", text: "none"})));
  }

  var loading = false, again = false, last = 0, timer = null;
  function load(refresh) {
    if (loading) { again = true; return; }
    loading = true;
    last = Date.now();
    Promise.all([
      M.api("/tasks", {flag: "lost", limit: 100}),
      M.api("/tasks", {flag: "stuck", limit: 100}),
      M.api("/risks", refresh ? {refresh: 1} : {})
    ]).then(function (r) {
      M.schedule(function () {
        M.clear(lostHolder); M.append(lostHolder, taskTable("Lost tasks", r[0], false));
        M.clear(stuckHolder); M.append(stuckHolder, taskTable("Stuck tasks", r[1], true));
        drawRisks(r[2]);
      });
    }).catch(function (e) { M.clear(lostHolder); M.append(lostHolder, M.errorBox(e)); })
      .then(function () {
        loading = false;
        if (again) { again = false; soon(); }
      });
  }
  // Pushes (task changes, worker heartbeats) ask for a reload, at most one every 2 s.
  function soon() {
    if (timer) return;
    timer = setTimeout(function () { timer = null; load(false); },
      Math.max(0, 2000 - (Date.now() - last)));
  }
  M.on("tasks", soon);
  M.on("workers", soon);
  M.handlers.refresh = function () { load(false); };
  M.subscribe({room: "workers"});
  M.subscribe({room: "tasks", filters: {state: "", name: "", worker: ""}});
  load(true);
  // lost is a matter of time passing too (a missed heartbeat is no event)
  setInterval(soon, 5000);
};
