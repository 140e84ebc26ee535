/* The page of one task name (/task-name/<name>): its counters over a window,
 * failure rate, runtime distribution, recent failures grouped by exception type,
 * and its history charts (charts.js). Data: GET /api/v1/task-names/<name> and
 * GET /api/v1/history?name=. The name is user data: textContent only. */
(window.MonitorPages = window.MonitorPages || {}).task_name = function (M) {
  "use strict";
  var h = M.h, name = String(M.CFG.params.name);
  var Charts = window.MonitorCharts;
  var window_ = Charts.windowFromUrl();
  var stats = h("div", {class: "cards", "data-part": "counts"});
  var runtimeHolder = h("div", {class: "chart", "data-chart": "runtime-distribution"});
  var runtimeNote = h("p", {class: "muted"});
  var failuresHolder = h("div", {"data-part": "failures"});
  var charts = h("div", {"data-part": "history"});
  var histogram = null;

  function card(label, value, cls, href) {
    return h(href ? "a" : "div", {class: "stat", href: href || null},
      h("span", {class: "label", text: label}),
      h("span", {class: "value" + (cls ? " " + cls : ""), text: value}));
  }
  function pct(v) {
    var n = M.num(v);
    return n === null ? "—" : (Math.round(n * 1000) / 10).toLocaleString() + " %";
  }
  function q(obj, key) { return obj && typeof obj === "object" ? obj[key] : null; }

  function render(body) {
    var totals = body.totals || {};
    var tasksHref = M.CFG.prefix + "/tasks" + M.qs({name: name});
    M.clear(stats);
    M.append(stats, [
      card("Stored", M.fmtNum(body.stored), null, tasksHref),
      card("Received", M.fmtNum(totals.received || 0)),
      card("Succeeded", M.fmtNum(totals.succeeded || 0), "state-text-success"),
      card("Failed", M.fmtNum(totals.failed || 0), "state-text-failure",
        M.CFG.prefix + "/tasks" + M.qs({name: name, state: "FAILURE"})),
      card("Retried", M.fmtNum(totals.retried || 0), "state-text-retry"),
      card("Failure rate", pct(body.failure_rate), M.num(body.failure_rate) > 0 ? "bad-text" : ""),
      card("Runtime p50", M.fmtDuration(q(totals.runtime, "p50"))),
      card("Runtime p95", M.fmtDuration(q(totals.runtime, "p95"))),
      card("Runtime p99", M.fmtDuration(q(totals.runtime, "p99"))),
      card("Queue wait p95", M.fmtDuration(q(totals.queue_wait, "p95")))]);

    var rt = body.runtime || {};
    if (histogram) histogram.destroy();
    M.clear(runtimeHolder);
    histogram = Charts.histogram(runtimeHolder, rt.buckets);
    runtimeNote.textContent = M.num(rt.count) ? "The newest " + M.fmtNum(rt.count) +
      " finished tasks of the window: min " + M.fmtDuration(rt.min) + ", p50 " +
      M.fmtDuration(rt.p50) + ", p95 " + M.fmtDuration(rt.p95) + ", p99 " +
      M.fmtDuration(rt.p99) + ", max " + M.fmtDuration(rt.max) +
      (rt.partial ? " (stopped at the read's budget)" : "") :
      "No finished task of this name in the window.";

    var f = body.failures || {};
    var groups = Array.isArray(f.groups) ? f.groups : [];
    M.clear(failuresHolder);
    M.append(failuresHolder, groups.length ? [M.table(["Exception", "Count", "Last seen",
      "Example", "Worker"], groups.map(function (g) {
        var ex = g && g.example || {};
        return h("tr", {"data-exception": String(g.exception)},
          h("td", {class: "mono", text: g.exception || "(no type)"}),
          h("td", {class: "num", text: M.fmtNum(g.count)}),
          h("td", null, M.agoEl(g.last_seen)),
          h("td", {class: "mono example"}, ex.id ? M.taskLink(ex.id, ex.message || ex.id) : "—"),
          h("td", null, ex.worker ? M.workerLink(ex.worker) : "—"));
      })), h("p", {class: "muted", text: "Grouped from the newest " + M.fmtNum(f.failures) +
        " failures of the window" + (M.num(f.other) ? "; " + M.fmtNum(f.other) +
        " more in smaller groups" : "") + (f.partial ? " (stopped at the read's budget)" :
        "") + "."})] : h("p", {class: "muted", text: "No failure in the window."}));
  }

  function load() {
    lastSummary = Date.now();
    return M.api("/task-names/" + M.enc(name), {window: window_}).then(function (body) {
      render(body);
      M.main.setAttribute("data-loaded", "true");
    }, function (e) {
      M.clear(stats);
      M.append(stats, M.errorBox(e));
      M.main.setAttribute("data-loaded", "error");
    });
  }

  M.clear(M.main);
  M.append(M.main, [
    h("div", {class: "title-row"}, h("h1", {class: "task-name-title"},
      h("span", {class: "muted", text: "Task "}), h("span", {class: "mono", text: name}))),
    h("p", {class: "links"}, M.link("/tasks" + M.qs({name: name}), "its tasks"), " · ",
      M.link("/tasks" + M.qs({name: name, state: "FAILURE"}), "its failures")),
    stats, charts,
    h("div", {class: "two"},
      M.section("Runtime distribution", runtimeHolder, runtimeNote),
      M.section("Recent failures by exception type", failuresHolder))]);
  // The counts and groups are read again with the charts' live pushes, at most
  // every SUMMARY_MS (two scans of up to 5,000 entries each).
  var SUMMARY_MS = 10000, lastSummary = 0;
  var panel = Charts.historyPanel(M, charts, {name: name, window: window_,
    onWindow: function (w) { window_ = w; load(); },
    onPush: function () { if (Date.now() - lastSummary >= SUMMARY_MS) load(); }});
  M.handlers.refresh = function () { load(); panel.load(); };
  load();
  panel.load();
};
