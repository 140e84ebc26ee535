/* Periodic tasks (/beat): the app's beat_schedule and celery-redbeat's entries, each with
 * its schedule, the last run seen (a link to that task), the next run and a missed badge.
 * Data from GET /api/v1/beat, then the "beat" room's pushes; every value (entry names, task names, args: redbeat's keys
 * are anyone's to write) goes in by textContent through the toolkit, never as HTML.
 */
(window.MonitorPages = window.MonitorPages || {}).beat = function (M) {
  "use strict";
  var h = M.h;
  var COLUMNS = ["Name", "Task", "Schedule", "Last run", "Next run", "Status"];
  var STATUS_TEXT = {scheduled: "on time", due: "due", missed: "missed", disabled: "disabled",
                     unknown: "unknown"};
  var status = h("span", {class: "muted"});
  var notes = h("div", {class: "beat-notes"});
  var tbody = h("tbody");
  M.clear(M.main);
  M.append(M.main, [
    h("div", {class: "title-row"}, h("h1", {text: "Periodic tasks"}), status),
    notes,
    h("div", {class: "card flush"}, h("table", {class: "grid beat"},
      h("thead", null, h("tr", null, COLUMNS.map(function (c) { return h("th", {text: c}); }))),
      tbody))]);

  // "in 4 s" / "12 s ago", kept current by the timer below (no request: only the clock moves).
  function span(s) { return s < 60 ? Math.round(s) + " s" : M.fmtDuration(s); }
  function relative(ts, pastWord) {
    var n = M.num(ts);
    if (n === null) return "";
    var s = n - Date.now() / 1000;
    return s >= 0 ? "in " + span(s) : (pastWord ? pastWord + " " : "") + span(-s) + " ago";
  }
  function relEl(ts, pastWord) {
    var n = M.num(ts);
    return h("span", {class: "beat-rel muted", "data-ts": n === null ? "" : n,
                      "data-past": pastWord || "", text: relative(ts, pastWord)});
  }
  setInterval(function () {
    document.querySelectorAll(".beat-rel").forEach(function (el) {
      el.textContent = relative(el.getAttribute("data-ts"), el.getAttribute("data-past"));
    });
  }, 1000);

  function text(v) { return v === null || v === undefined ? "" : String(v); }
  // The server's clock minus this one's: a status turns "due", then "missed", as time
  // passes (the server's rule: now > due, now > due + grace) without asking again.
  var skew = 0;
  function statusNow(e) {
    var due = M.num(e.due), grace = M.num(e.grace), now = Date.now() / 1000 + skew;
    if (e.status === "disabled" || e.status === "unknown" || due === null) return e.status;
    if (e.missed || (grace !== null && now > due + grace)) return "missed";
    return now > due ? "due" : "scheduled";
  }
  function setStatus(el, s) {
    if (!STATUS_TEXT[s]) s = "unknown";
    el.className = "badge beat-status beat-" + s;
    el.textContent = STATUS_TEXT[s];
    var tr = el.closest("tr");
    if (tr) tr.className = "beat-row beat-row-" + s;
  }
  var live = [];  // [badge element, entry] of the rows drawn
  var truncated = false;
  function writeStatus() {
    var missed = 0;
    live.forEach(function (pair) {
      var s = statusNow(pair[1]);
      setStatus(pair[0], s);
      if (s === "missed") missed++;
    });
    status.textContent = M.fmtNum(live.length) + " entr" + (live.length === 1 ? "y" : "ies") +
      (missed ? " · " + M.fmtNum(missed) + " missed" : "") +
      (truncated ? " · more exist than are listed" : "");
  }
  setInterval(writeStatus, 1000);
  function statusBadge(e) {
    var s = STATUS_TEXT[e.status] ? e.status : "unknown";
    var main = h("span", {class: "badge beat-status beat-" + s, text: STATUS_TEXT[s]});
    live.push([main, e]);
    var badges = [main];
    if (e.never_run) {
      badges.push(" ", h("span", {class: "badge beat-status beat-never", text: "never run",
        title: "no run of this entry seen since the monitor's oldest stored task"}));
    }
    return badges;
  }
  function row(e) {
    var name = [h("div", {class: "name", text: text(e.name)}),
                h("span", {class: "muted small", text: e.source === "redbeat" ?
                  "redbeat" + (e.in_app_schedule ? " · from beat_schedule" : "") :
                  "beat_schedule"})];
    if (e.error) name.push(h("div", {class: "bad-value small", text: text(e.error)}));
    var task = e.task ? M.link("/tasks?name=" + M.enc(e.task), String(e.task)) :
      h("span", {class: "muted", text: "—"});
    var args = [e.args, e.kwargs].filter(function (a) {
      return a !== null && a !== undefined && a !== "" && a !== "()" && a !== "[]" &&
        a !== "{}";
    }).map(text).join(" ");
    var sched = [h("div", {class: "mono", text: text(e.schedule) || "—"})];
    if (args) sched.push(h("div", {class: "args mono", title: args, text: args}));
    if (e.queue) sched.push(h("div", {class: "muted small", text: "queue " + text(e.queue)}));
    var last;
    if (e.last_run_id) {
      last = [h("a", {href: M.CFG.prefix + "/task/" + M.enc(e.last_run_id),
                      class: "beat-last"}, M.fmtTime(e.last_run)), " ",
              e.last_run_state ? M.badge(String(e.last_run_state)) : null,
              h("div", null, relEl(e.last_run))];
    } else if (e.beat_last_run_at) {
      last = [M.fmtTime(e.beat_last_run_at), h("div", {class: "muted small",
        text: "by redbeat's record; no task seen"})];
    } else {
      last = h("span", {class: "muted", text: "none seen"});
    }
    if (e.total_run_count !== null && e.total_run_count !== undefined) {
      last = [last, h("div", {class: "muted small", text: M.fmtNum(e.total_run_count) +
        " runs (redbeat)"})];
    }
    var next = e.next_run !== null && e.next_run !== undefined ?
      [M.fmtTime(e.next_run), h("div", null, relEl(e.next_run, "due"))] :
      h("span", {class: "muted", text: "—"});
    var tr = h("tr", {class: "beat-row beat-row-" + text(e.status), "data-name": text(e.name)},
      h("td", null, name), h("td", {class: "name"}, task), h("td", null, sched),
      h("td", null, last), h("td", null, next), h("td", null, statusBadge(e)));
    return tr;
  }
  var drawRow = M.safeRow(row, COLUMNS.length);

  function draw(b) {
    var entries = Array.isArray(b && b.entries) ? b.entries : [];
    var serverNow = M.num(b && b.now);
    skew = serverNow === null ? 0 : serverNow - Date.now() / 1000;
    live = [];
    M.clear(tbody);
    M.clear(notes);
    entries.forEach(function (e, i) { tbody.appendChild(drawRow(e, i, entries)); });
    truncated = !!(b && b.truncated);
    writeStatus();
    var sources = (b && b.sources) || {};
    if (sources.app && !sources.app.configured) {
      notes.appendChild(h("p", {class: "note muted", text: "The monitor was started without " +
        "your Celery app: start it with `monitor serve -A proj` (or `celery -A proj monitor`) " +
        "to list its beat_schedule and redbeat entries."}));
    }
    var rb = sources.redbeat;
    if (rb && rb.present) {
      notes.appendChild(h("p", {class: "note muted", text: "redbeat: " + M.fmtNum(rb.count) +
        " entries under " + text(rb.prefix) + " in " + text(rb.url) +
        (rb.lock_held ? " · a scheduler holds the lock" : " · no scheduler holds the lock")}));
    } else if (rb && rb.error && rb.present === null) {
      notes.appendChild(h("p", {class: "note bad-value", text: "redbeat: " + text(rb.error)}));
    }
    if (!entries.length) {
      tbody.appendChild(h("tr", null, h("td", {colspan: COLUMNS.length, class: "muted",
        text: "No periodic task: the app has no beat_schedule and no redbeat entry was found."})));
    }
  }
  function load() {
    return M.api("/beat").then(function (b) {
      M.schedule(function () { draw(b); });
    }).catch(function (e) {
      M.clear(tbody);
      tbody.appendChild(h("tr", null, h("td", {colspan: COLUMNS.length}, M.errorBox(e))));
    });
  }
  // Live: the "beat" room pushes the same object on new runs and every few seconds.
  M.on("beat", function (b) { M.schedule(function () { draw(b); }); });
  M.subscribe({room: "beat"});
  M.handlers.refresh = load;
  load();
};
