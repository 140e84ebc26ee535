/* celery monitor: every page of the dashboard.
 *
 * Data comes from the REST API (/api/v1) and stays live through Socket.IO
 * rooms. Every value is put in the DOM with textContent / createElement,
 * never as HTML: task names, args and exceptions are user data.
 * Renders are batched (at most one per animation frame and RENDER_MS) so a
 * burst of updates never freezes the tab.
 * Stored values are untrusted too: every formatter below is total (a time in
 * the year 300000, -1e308, "NaN", an object: it shows the raw value or "—",
 * never throws), and one row that cannot be drawn never blanks its page.
 */
(function () {
  "use strict";

  var CFG = JSON.parse(document.getElementById("monitor-config").textContent);
  var main = document.getElementById("main");
  var conn = document.getElementById("conn");
  var RENDER_MS = 250;
  // The state names come from the server (monitor/vocabulary.py), never spelled here.
  var STATES = CFG.states;

  // -- DOM helpers ------------------------------------------------------------
  function h(tag, attrs) {
    var el = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === null || v === undefined || v === false) return;
        if (k === "class") el.className = v;
        else if (k === "text") el.textContent = String(v);
        else if (k.slice(0, 2) === "on") el.addEventListener(k.slice(2), v);
        else el.setAttribute(k, v);
      });
    }
    for (var i = 2; i < arguments.length; i++) append(el, arguments[i]);
    return el;
  }
  function append(el, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { append(el, c); }); return; }
    el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
  // Through the CSSOM: the Content-Security-Policy refuses style="..." attributes.
  function widthOf(el, pct) {
    el.style.width = Math.max(0, Math.min(100, pct)).toFixed(1) + "%";
    return el;
  }
  function link(path, text) { return h("a", {href: CFG.prefix + path, text: text}); }
  // encodeURIComponent throws on a lone surrogate ("\ud800"): replace it first.
  function enc(value) {
    var s = String(value);
    if (s.toWellFormed) s = s.toWellFormed();
    else s = s.replace(/[\ud800-\udbff](?![\udc00-\udfff])|([^\ud800-\udbff]|^)[\udc00-\udfff]/g,
      "$1\ufffd");
    return encodeURIComponent(s);
  }
  function taskLink(id, text) { return link("/task/" + enc(id), text || id); }
  function workerLink(host) { return link("/worker/" + enc(host), host); }
  function taskNameLink(name) { return link("/task-name/" + enc(name), name); }
  function badge(state) {
    return h("span", {class: "badge state-" + String(state || "UNKNOWN").toLowerCase(),
                      text: state || "?"});
  }

  // -- numbers and time (total: any input gives text, nothing throws) ------------------
  var MAX_RAW = 80;  // characters of a raw value shown where a number or time was expected
  function num(v) {
    if (typeof v === "number") return isFinite(v) ? v : null;
    if (typeof v !== "string") return null;
    var n = parseFloat(v);
    return isFinite(n) ? n : null;
  }
  function raw(v) {
    var s;
    try { s = typeof v === "string" ? v : JSON.stringify(v); } catch (e) { s = null; }
    if (s === undefined || s === null) s = String(Object.prototype.toString.call(v));
    return s.length > MAX_RAW ? s.slice(0, MAX_RAW) + "…" : s;
  }
  function fmtNum(v) {
    var n = num(v);
    return n === null ? (v === null || v === undefined || v === "" ? "—" : raw(v)) :
      n.toLocaleString();
  }
  function dateOf(ts) {
    var n = num(ts);
    if (n === null) return null;
    var d = new Date(n * 1000);  // beyond ±8.64e15 ms the Date is invalid
    return isNaN(d.getTime()) ? null : d;
  }
  function fmtTime(ts) {
    if (ts === null || ts === undefined || ts === "") return h("span", {class: "muted", text: "—"});
    var d = dateOf(ts);
    if (d === null) {
      // Beyond what a Date holds (±273,790 years): the raw value, and its year when sane.
      var n = num(ts), year = n === null ? null : Math.round(1970 + n / 31556952);
      return h("span", {class: "mono bad-value", title: "not a valid time",
        text: raw(ts) + (year !== null && Math.abs(year) < 1e9 ? " (year " +
          year.toLocaleString() + ")" : "")});
    }
    var local;
    try {
      local = d.toLocaleString(undefined, {year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit"}) + "." +
        String(d.getMilliseconds()).padStart(3, "0");
    } catch (e) { local = d.toISOString(); }
    return h("time", {datetime: d.toISOString(), title: d.toISOString().replace("T", " ")
      .replace("Z", " UTC"), text: local});
  }
  function fmtDuration(seconds) {
    var s = num(seconds);
    if (s === null) {
      return seconds === null || seconds === undefined || seconds === "" ? "—" : raw(seconds);
    }
    if (s < 0) return "−" + fmtDuration(-s);
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms";
    if (s < 60) return s.toFixed(2) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    if (s < 86400 * 3) return (s / 3600).toFixed(1) + " h";
    if (s < 86400 * 365 * 1000) return (s / 86400).toFixed(1) + " d";
    return s.toExponential(2) + " s";
  }
  // The time from a to b (seconds): "+1.20 s", or the disagreement of two clocks.
  function fmtDelta(a, b, skew) {
    var x = num(a), y = num(b), k = num(skew);
    if (k !== null && k > 0) return "clocks disagree by " + fmtDuration(k);
    if (x === null || y === null) return "—";
    var d = y - x;
    return d < 0 ? "clocks disagree by " + fmtDuration(-d) : "+" + fmtDuration(d);
  }
  function ago(ts) {
    var n = num(ts);
    if (n === null) return "never";
    var s = Date.now() / 1000 - n;
    if (s < -60) return "ahead of this clock";
    s = Math.max(0, s);
    if (s < 60) return Math.round(s) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  function agoEl(ts) {
    var n = num(ts);
    return h("span", {class: "ago", "data-ts": n === null ? "" : n, text: ago(ts)});
  }
  setInterval(function () {
    document.querySelectorAll(".ago").forEach(function (el) {
      el.textContent = ago(el.getAttribute("data-ts"));
    });
  }, 1000);

  // -- data -------------------------------------------------------------------
  function qs(params) {
    var parts = [];
    Object.keys(params || {}).forEach(function (k) {
      var v = params[k];
      if (v !== null && v !== undefined && v !== "") {
        parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(v));
      }
    });
    return parts.length ? "?" + parts.join("&") : "";
  }
  // The body as JSON; an answer that is not OK throws an Error with the API's
  // {"error"} message (or the status), its status and body attached; so does an OK
  // answer that is not JSON (a page must not read it as "nothing").
  function parseResponse(r) {
    return r.text().then(function (text) {
      var body = null, bad = false;
      try { body = text ? JSON.parse(text) : null; } catch (e) { bad = true; }
      if (r.ok && bad) throw new Error("the server's answer is not valid JSON");
      if (!r.ok) {
        var err = new Error(body && typeof body === "object" && body.error ?
          String(body.error) : "HTTP " + r.status + (r.statusText ? " " + r.statusText : ""));
        err.status = r.status;
        err.body = body;
        throw err;
      }
      return body;
    });
  }
  function getJSON(url, params) {
    return fetch(url + qs(params), {headers: {Accept: "application/json"},
                                    credentials: "same-origin"}).then(parseResponse);
  }
  function api(path, params) { return getJSON(CFG.api + path, params); }
  // Every POST carries the page's CSRF token (a session needs it; nothing else does).
  function post(path, body, extraHeaders) {
    var headers = {"Content-Type": "application/json", Accept: "application/json",
                   "X-CSRFToken": CFG.csrf_token || ""};
    Object.keys(extraHeaders || {}).forEach(function (k) { headers[k] = extraHeaders[k]; });
    return fetch(CFG.api + path, {method: "POST", credentials: "same-origin", headers: headers,
                                  body: JSON.stringify(body || {})}).then(parseResponse);
  }
  function pretty(text) {
    if (text === undefined || text === null) return null;
    try {
      return JSON.stringify(typeof text === "string" ? JSON.parse(text) : text, null, 2);
    } catch (e) { return typeof text === "string" ? text : raw(text); }
  }
  function errorBox(err) {
    return h("div", {class: "error", text: String((err && err.message) || err)});
  }

  // -- batched rendering ----------------------------------------------------------
  var pending = null, lastRender = 0, timer = null;
  function schedule(fn) {
    pending = fn;
    if (timer) return;
    var wait = Math.max(0, RENDER_MS - (Date.now() - lastRender));
    timer = setTimeout(function () {
      requestAnimationFrame(function () {
        timer = null;
        lastRender = Date.now();
        var f = pending; pending = null;
        try {
          if (f) f();
        } catch (e) {  // a bug, not data: say so on the page instead of a blank one
          append(main, errorBox("could not draw this page: " + (e && e.message)));
          throw e;
        }
      });
    }, wait);
  }

  // -- live connection -------------------------------------------------------------
  var rooms = [];
  var handlers = {};
  // The monitor's own server uses the default namespace; a host's server, "/monitor".
  var socket = io(CFG.socketio_namespace || "/", {path: CFG.socketio_path,
                  transports: ["websocket", "polling"], reconnectionDelayMax: 5000});
  function setConn(kind, text) {
    conn.className = "conn conn-" + kind;
    conn.textContent = text;
  }
  function subscribe(payload) {
    rooms.push(payload);
    if (socket.connected) socket.emit("subscribe", payload);
  }
  // Leave one room (a chart's previous window).
  function unsubscribe(payload) {
    var key = JSON.stringify(payload);
    rooms = rooms.filter(function (p) { return JSON.stringify(p) !== key; });
    if (socket.connected) socket.emit("unsubscribe", payload);
  }
  function unsubscribeAll() {
    rooms.forEach(function (p) { if (socket.connected) socket.emit("unsubscribe", p); });
    rooms = [];
  }
  var listening = {};
  function listen(event) {
    if (listening[event]) return;
    listening[event] = true;
    socket.on(event, function (data) { if (handlers[event]) handlers[event](data); });
  }
  // A page's handler for one live event; the socket listens for it from then on.
  function on(event, fn) { handlers[event] = fn; listen(event); }
  ["overview", "workers", "tasks", "task", "worker", "job"].forEach(listen);
  var everConnected = false;
  socket.on("connect", function () {
    setConn("ok", "live");
    rooms.forEach(function (p) { socket.emit("subscribe", p); });
    // after a restart we may have missed changes: fetch the view again
    if (everConnected && handlers.refresh) handlers.refresh();
    everConnected = true;
  });
  socket.on("disconnect", function () { setConn("down", "reconnecting…"); });
  socket.io.on("reconnect_attempt", function () { setConn("down", "reconnecting…"); });
  socket.on("status", function (s) {
    if (s && s.redis === false) setConn("warn", "Redis unavailable");
    else if (s && s.events === "reconnecting") setConn("warn", "live · broker reconnecting");
    else if (socket.connected) setConn("ok", "live");
  });

  // -- shared pieces ------------------------------------------------------------------
  function table(columns, rows) {
    return h("table", {class: "grid"},
      h("thead", null, h("tr", null, columns.map(function (c) { return h("th", {text: c}); }))),
      h("tbody", null, rows));
  }
  function kv(pairs) {
    return h("dl", {class: "kv"}, pairs.filter(function (p) { return p[1] !== null &&
      p[1] !== undefined && p[1] !== ""; }).map(function (p) {
      return [h("dt", {text: p[0]}), h("dd", null, p[1])];
    }));
  }
  function section(title) {
    var body = Array.prototype.slice.call(arguments, 1);
    return h("section", {class: "card"}, h("h2", {text: title}), body);
  }
  function argsText(row) {
    var a = row.args_json !== undefined ? row.args_json : row.args;
    var k = row.kwargs_json !== undefined ? row.kwargs_json : row.kwargs;
    var parts = [];
    if (a && a !== "()" && a !== "[]") parts.push(typeof a === "string" ? a : raw(a));
    if (k && k !== "{}") parts.push(typeof k === "string" ? k : raw(k));
    return parts.join(" ");
  }
  // One row that cannot be drawn shows as one row saying so, not as a blank page.
  function safeRow(draw, columns) {
    return function (item, i, list) {
      try { return draw(item, i, list); } catch (e) {
        return h("tr", {"data-id": item && item.id, class: "bad-row"},
          h("td", {colspan: columns, class: "mono bad-value",
                   text: "cannot show " + raw(item) + ": " + raw(e && e.message)}));
      }
    };
  }
  var TASK_COLUMNS = ["State", "Name", "Task id", "Worker", "Received", "Runtime", "Arguments"];
  // Flags, not states (monitor/lost.py): the rows of /api/v1/tasks carry lost and stuck.
  function flagBadges(row) {
    var out = [];
    if (row.lost === true) out.push(h("span", {class: "badge state-lost flag", text: "lost",
      title: "its worker is offline: this task may be lost"}));
    if (row.stuck === true) out.push(h("span", {class: "badge flag-stuck flag", text: "stuck",
      title: String(row.stuck_reason || "stuck")}));
    if (row.redelivery === true) out.push(h("span", {class: "badge flag-broker flag",
      text: "will be redelivered", title: "unacknowledged for longer than the broker's " +
        "visibility timeout"}));
    if (row.runs_twice === true) out.push(h("span", {class: "badge flag-broker flag",
      text: "runs twice", title: "its ETA is further than the broker's visibility timeout"}));
    return out;
  }
  var taskRow = safeRow(drawTaskRow, TASK_COLUMNS.length);
  function drawTaskRow(row) {
    var tr = h("tr", {"data-id": row.id},
      h("td", null, badge(row.state), flagBadges(row)),
      h("td", {class: "name"}, row.name ? taskNameLink(row.name) : "—"),
      h("td", {class: "mono"}, taskLink(row.id)),
      h("td", null, row.worker ? workerLink(row.worker) : h("span", {class: "muted", text: "—"})),
      h("td", null, fmtTime(row.received || row.sent || row.timestamp)),
      h("td", {class: "num", text: fmtDuration(row.runtime)}),
      h("td", {class: "args mono", text: argsText(row), title: argsText(row)}));
    return tr;
  }

  // -- acting on the cluster: confirmation dialogs, the workers' replies -------------------
  // Operators get buttons; everyone else gets none at all (not disabled ones). When
  // nobody may act (no user configured, --read-only) the pages say why, in one line.
  var CAN_ACT = CFG.can_act === true;
  var SIGNALS = ["SIGTERM", "SIGKILL", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1"];
  function refusalLine() {
    if (CAN_ACT || !CFG.actions_refusal) return null;
    return h("p", {class: "refusal", title: "why this page shows no action buttons",
                   text: String(CFG.actions_refusal)});
  }
  function loginLink() {
    return h("a", {href: CFG.prefix + "/login" + qs({next: location.pathname + location.search}),
                   text: "log in"});
  }
  function button(label, onclick, cls, attrs) {
    return h("button", Object.assign({type: "button", class: "btn" + (cls ? " " + cls : ""),
                                      text: label, onclick: onclick}, attrs || {}));
  }
  var dialogCount = 0;
  // A modal <dialog>: what will happen and to what, then the answer (or the API's
  // error, the dialog staying open) in the same dialog.
  // opts: title, body (nodes), confirm (label), danger, typed (text to type first),
  // run() -> Promise of the result, show(result) -> nodes, done(result), closeOnDone.
  function confirmAction(opts) {
    var titleId = "dialog-title-" + (++dialogCount);
    var dlg = h("dialog", {class: "action-dialog" + (opts.danger ? " danger" : ""),
                           "aria-labelledby": titleId});
    var problem = h("div", {class: "error dialog-error", role: "alert", hidden: "hidden"});
    var outcome = h("div", {class: "dialog-result"});
    var typed = opts.typed ? h("input", {class: "typed", autocomplete: "off",
      spellcheck: "false", "aria-label": "type " + opts.typed + " to confirm"}) : null;
    var label = opts.confirm || "Confirm";
    var go = h("button", {type: "submit", class: "btn " + (opts.danger ? "btn-danger" :
      "btn-primary"), "data-confirm": "1", text: label});
    var cancel = button("Cancel", function () { dlg.close(); }, "dialog-cancel");
    var busy = false, finished = false;
    function sync() {
      go.disabled = busy || finished || (typed !== null && typed.value !== opts.typed);
    }
    function fail(err) {
      busy = false;
      go.textContent = label;
      sync();
      clear(problem);
      append(problem, [String((err && err.message) || err),
        err && err.status === 401 ? [" (", loginLink(), ")"] : null]);
      problem.hidden = false;
    }
    var form = h("form", {class: "dialog-form", onsubmit: function (ev) {
      ev.preventDefault();
      sync();
      if (go.disabled) return;
      busy = true;
      sync();
      go.textContent = "Working…";
      problem.hidden = true;
      var pending;
      try { pending = Promise.resolve(opts.run()); } catch (e) { pending = Promise.reject(e); }
      pending.then(function (result) {
        busy = false;
        finished = true;
        go.hidden = true;
        cancel.textContent = "Close";
        clear(outcome);
        try {
          append(outcome, opts.show ? opts.show(result) : h("p", {text: "Done."}));
        } catch (e) { append(outcome, h("pre", {text: raw(result)})); }
        dlg.classList.add("finished");
        if (opts.done) opts.done(result);
        if (opts.closeOnDone) dlg.close(); else cancel.focus();
      }, fail);
    }},
      h("h3", {id: titleId, text: opts.title}),
      h("div", {class: "dialog-body"}, opts.body),
      typed ? h("label", {class: "typed-label"}, "Type ", h("code", {text: opts.typed}),
        " to confirm ", typed) : null,
      problem, outcome,
      h("div", {class: "dialog-buttons"}, cancel, go));
    if (typed) typed.addEventListener("input", sync);
    dlg.appendChild(form);
    dlg.addEventListener("close", function () { dlg.remove(); });
    // In <body>, not <main>: the live pages redraw <main> while a dialog is open.
    document.body.appendChild(dlg);
    sync();
    dlg.showModal();
    if (typed) typed.focus();
    return dlg;
  }
  function replyOf(reply) {
    if (reply && typeof reply === "object" && !Array.isArray(reply)) {
      if ("error" in reply) {
        return {kind: "error", text: String(typeof reply.error === "string" ? reply.error :
          raw(reply.error)) + (reply.hint ? " — " + String(reply.hint) : "")};
      }
      if ("ok" in reply) {
        return {kind: "ok", text: typeof reply.ok === "string" ? reply.ok : raw(reply.ok)};
      }
    }
    return {kind: "reply", text: raw(reply)};
  }
  // Each worker's reply, or its timeout (Controller results: "replies", "timeouts").
  function repliesView(result) {
    result = result && typeof result === "object" ? result : {};
    var replies = result.replies && typeof result.replies === "object" ? result.replies : {};
    var timeouts = Array.isArray(result.timeouts) ? result.timeouts : [];
    var rows = Object.keys(replies).sort().map(function (host) {
      var r = replyOf(replies[host]);
      return h("tr", {class: "reply reply-" + r.kind, "data-host": host},
        h("td", null, workerLink(host)),
        h("td", null, h("span", {class: "badge reply-badge-" + r.kind, text: r.kind})),
        h("td", {class: "reply-text", text: r.text}));
    }).concat(timeouts.map(function (host) {
      return h("tr", {class: "reply reply-timeout", "data-host": String(host)},
        h("td", null, workerLink(String(host))),
        h("td", null, h("span", {class: "badge reply-badge-timeout", text: "timeout"})),
        h("td", {class: "reply-text muted", text: "no reply within the timeout"}));
    }));
    return h("div", {class: "replies"},
      rows.length ? table(["Worker", "", "Reply"], rows) :
        h("p", {class: "muted", text: "No worker replied, and none was expected " +
          "(is any worker online?)."}),
      result.note ? h("p", {class: "muted note", text: String(result.note)}) : null);
  }
  // A number typed in a field, or the text as typed (the API says what is wrong with it).
  function numberOr(text) {
    var t = String(text || "").trim();
    if (t === "") return null;
    return /^[+-]?\d+(\.\d+)?$/.test(t) && isFinite(Number(t)) ? Number(t) : t;
  }
  function field(labelText, input, hint) {
    return h("label", {class: "field"}, h("span", {class: "field-label", text: labelText}), input,
      hint ? h("span", {class: "field-hint", text: hint}) : null);
  }
  // Purge: the confirmation shows the queue's depth, read when the dialog opens.
  function purgeQueue(queue, done) {
    var depth = h("p", {class: "queue-depth muted", text: "Reading the queue's depth…"});
    confirmAction({
      title: "Purge queue " + queue,
      danger: true,
      confirm: "Purge",
      body: [h("p", null, "Delete every message waiting in queue ", h("code", {text: queue}),
        ". Messages that workers hold already are not in the queue and stay."), depth],
      run: function () { return post("/queues/" + enc(queue) + "/purge", {}); },
      show: function (r) {
        return h("p", {class: "purged", text: "Purged " + fmtNum(r && r.purged) + " of " +
          fmtNum(r && r.depth_before) + " messages from " + queue + "."});
      },
      done: done,
    });
    api("/queues/" + enc(queue)).then(function (r) {
      depth.className = "queue-depth";
      depth.textContent = "It holds " + fmtNum(r && r.depth) + " message" +
        (num(r && r.depth) === 1 ? "" : "s") + " now.";
    }).catch(function (e) {
      depth.className = "queue-depth bad-value";
      depth.textContent = "Its depth is unknown: " + e.message;
    });
  }

  // -- pages ---------------------------------------------------------------------------
  var pages = {};

  pages.overview = function () {
    var data = null;
    // The history charts (charts.js): made once, put back on each render.
    var charts = window.MonitorCharts.historySection(toolkit, "History", {});
    function render() {
      if (!data) return;
      var counts = data.counts || {};
      var workers = data.workers || {};
      var slowest = Array.isArray(data.slowest) ? data.slowest : [];
      var failing = Array.isArray(data.failing) ? data.failing : [];
      var cards = h("div", {class: "cards"},
        h("a", {class: "stat", href: CFG.prefix + "/workers"},
          h("span", {class: "label", text: "Workers online"}),
          h("span", {class: "value ok", text: fmtNum(workers.online)}),
          h("span", {class: "sub", text: fmtNum(workers.offline) + " offline"})),
        STATES.filter(function (s) { return s in counts || s === "PROGRESS"; })
          .filter(function (s) { return s !== "PROGRESS"; }).map(function (s) {
          return h("a", {class: "stat", href: CFG.prefix + "/tasks?state=" + s},
            h("span", {class: "label", text: s}),
            h("span", {class: "value state-text-" + s.toLowerCase(),
                        text: fmtNum(counts[s] || 0)}));
        }));
      var notes = [];
      Object.keys(data.dropped || {}).forEach(function (src) {
        if (data.dropped[src]) notes.push(h("div", {class: "warn-note",
          text: fmtNum(data.dropped[src]) + " " + src +
            " records dropped while Redis was unavailable"}));
      });
      if (data.malformed) notes.push(h("div", {class: "warn-note",
        text: fmtNum(data.malformed) + " malformed events skipped"}));
      clear(main);
      append(main, [h("h1", {text: "Overview"}), notes, cards, charts.el,
        h("div", {class: "two"},
          section("Slowest task names (average runtime)", slowest.length ?
            table(["Name", "Average", "Runs"], slowest.map(function (r) {
              return h("tr", null, h("td", null, taskNameLink(r.name)),
                h("td", {class: "num", text: fmtDuration(r.avg_runtime)}),
                h("td", {class: "num", text: fmtNum(r.count)}));
            })) : h("p", {class: "muted", text: "No finished tasks in the last hour."})),
          section("Most failing task names", failing.length ?
            table(["Name", "Failures"], failing.map(function (r) {
              return h("tr", null, h("td", null, taskNameLink(r.name)),
                h("td", {class: "num", text: fmtNum(r.failures)}));
            })) : h("p", {class: "muted", text: "No failures in the last hour."})))]);
    }
    function load() {
      return api("/stats").then(function (d) { data = d; schedule(render); })
        .catch(function (e) { clear(main); append(main, errorBox(e)); });
    }
    on("overview", function (d) { data = d; schedule(render); });
    handlers.refresh = function () { load(); charts.load(); };  // pushes were missed
    subscribe({room: "overview"});
    load();
  };

  pages.tasks = function () {
    var params = new URLSearchParams(location.search);
    var filters = {};
    ["state", "name", "worker", "since", "until", "q", "sort", "order", "flag"]
      .forEach(function (k) { if (params.get(k)) filters[k] = params.get(k); });
    var rows = new Map();   // id -> row, in display order
    // A flag filter is a scan: live pushes update its rows, they add none.
    var nextCursor = null, total = null, liveOn = !filters.q && !filters.sort && !filters.flag;
    var tbody, summary, more;

    function form(names) {
      var state = h("select", {name: "state"}, h("option", {value: "", text: "any state"}),
        STATES.map(function (s) { return h("option", {value: s, text: s,
          selected: filters.state === s ? "selected" : null}); }));
      var name = h("select", {name: "name"}, h("option", {value: "", text: "any task"}),
        names.map(function (n) { return h("option", {value: n, text: n,
          selected: filters.name === n ? "selected" : null}); }));
      if (filters.name && names.indexOf(filters.name) < 0) {
        name.appendChild(h("option", {value: filters.name, text: filters.name, selected: "selected"}));
      }
      var worker = h("input", {name: "worker", placeholder: "worker", value: filters.worker || ""});
      var since = h("input", {name: "since", type: "datetime-local",
                              value: toLocalInput(filters.since), title: "updated since"});
      var until = h("input", {name: "until", type: "datetime-local",
                              value: toLocalInput(filters.until), title: "updated until"});
      var q = h("input", {name: "q", type: "search", placeholder: "search id, args, result, error",
                          value: filters.q || ""});
      var sort = h("select", {name: "sort"},
        [["", "newest first"], ["runtime", "slowest first"], ["name", "by name"]].map(function (o) {
          return h("option", {value: o[0], text: o[1], selected: (filters.sort || "") === o[0] ?
            "selected" : null}); }));
      var flag = h("select", {name: "flag", title: "lost: on an offline worker; stuck: past " +
        "its time limit or far past its p99"},
        [["", "any flag"], ["lost", "lost"], ["stuck", "stuck"]].map(function (o) {
          return h("option", {value: o[0], text: o[1], selected: (filters.flag || "") === o[0] ?
            "selected" : null}); }));
      var f = h("form", {class: "filters", onsubmit: function (ev) {
        ev.preventDefault();
        var next = {state: state.value, name: name.value, worker: worker.value.trim(),
                    since: toEpoch(since.value), until: toEpoch(until.value), q: q.value.trim(),
                    sort: sort.value, order: sort.value === "name" ? "asc" : "",
                    flag: flag.value};
        location.search = qs(next);
      }}, state, name, worker, since, until, q, sort, flag,
        h("button", {type: "submit", text: "Apply"}),
        h("a", {href: CFG.prefix + "/tasks", class: "reset", text: "Reset"}),
        CAN_ACT ? h("a", {class: "bulk-link", title: "retry or revoke the tasks this filter " +
          "selects", href: CFG.prefix + "/bulk" + qs({action: BULK_STATES.revoke.indexOf(
            filters.state) >= 0 ? "revoke" : "retry", state: filters.state, name: filters.name,
          worker: filters.worker, since: filters.since, until: filters.until}),
          text: "Bulk…"}) : null);
      [state, name, sort, flag].forEach(function (el) {
        el.addEventListener("change", function () { f.requestSubmit(); });
      });
      return f;
    }
    function renderRows() {
      clear(tbody);
      rows.forEach(function (row) { tbody.appendChild(taskRow(row)); });
      summary.textContent = (total !== null ? fmtNum(total) + " tasks" : rows.size +
        " shown") + (liveOn ? " · live" : "");
      more.hidden = !nextCursor;
    }
    function fetchPage(cursor) {
      var p = Object.assign({limit: 50, cursor: cursor}, filters);
      return api("/tasks", p).then(function (body) {
        if (!cursor) rows.clear();
        (body.tasks || []).forEach(function (r) { rows.set(r.id, r); });
        nextCursor = body.next_cursor; total = body.total;
        schedule(renderRows);
      });
    }
    function upsert(list) {
      var fresh = new Map();
      list.forEach(function (r) {
        // a pushed row has no flags: keep the fetched ones until the next fetch
        var had = rows.get(r.id);
        if (had && r.lost === undefined) {
          r = Object.assign({}, r, {lost: had.lost, stuck: had.stuck,
                                    stuck_reason: had.stuck_reason});
        }
        if (had && r.redelivery === undefined && r.runs_twice === undefined &&
            NOT_RUNNING[r.state] !== 1) {
          r = Object.assign({}, r, {redelivery: had.redelivery, runs_twice: had.runs_twice});
        }
        if (had) rows.set(r.id, r);
        else if (liveOn) fresh.set(r.id, r);
      });
      if (fresh.size) {
        if (num(total) !== null) total = num(total) + fresh.size;
        var merged = new Map(fresh);
        rows.forEach(function (v, k) { merged.set(k, v); });
        rows = merged;
      }
      schedule(renderRows);
    }
    tbody = h("tbody");
    summary = h("span", {class: "muted"});
    more = h("button", {class: "more", type: "button", text: "Load more", hidden: "hidden",
                        onclick: function () { fetchPage(nextCursor); }});
    clear(main);
    var formHolder = h("div");
    append(main, [h("div", {class: "title-row"}, h("h1", {text: "Tasks"}), summary), formHolder,
      h("div", {class: "card flush"}, h("table", {class: "grid tasks"},
        h("thead", null, h("tr", null, TASK_COLUMNS.map(function (c) { return h("th", {text: c});
        }))), tbody)), more]);
    api("/task-names").then(function (b) { formHolder.appendChild(form(b.names || [])); })
      .catch(function () { formHolder.appendChild(form([])); });
    fetchPage(null).catch(function (e) { append(main, errorBox(e)); });
    on("tasks", function (d) { upsert(d.rows || []); });
    handlers.refresh = function () { fetchPage(null); };
    subscribe({room: "tasks", filters: {state: filters.state || "", name: filters.name || "",
                                        worker: filters.worker || ""}});
  };

  // Celery's own states; any other (PROGRESS, custom) is a running task's.
  var NOT_RUNNING = {PENDING: 1, SUCCESS: 1, FAILURE: 1, REVOKED: 1, REJECTED: 1, RETRY: 1,
                     IGNORED: 1};
  var TIME_FIELDS =
    /^(sent|received|started|succeeded|failed|retried|revoked|rejected|timestamp|retried_at)$/;

  pages.task = function () {
    var id = CFG.params.id;
    function progressBar(task) {
      if (!task.progress || typeof task.progress !== "string") return null;
      var p; try { p = JSON.parse(task.progress); } catch (e) { return null; }
      if (!p || typeof p !== "object") return null;
      var pct = null;
      if (num(p.total)) pct = 100 * (num(p.current) || 0) / num(p.total);
      else if (num(p.percent) !== null) pct = num(p.percent);
      else if (num(p.progress) !== null) pct = num(p.progress) <= 1 ? num(p.progress) * 100 :
        num(p.progress);
      if (pct === null || !isFinite(pct)) return null;
      if (task.state === "SUCCESS") pct = 100;
      pct = Math.max(0, Math.min(100, pct));
      return h("div", {class: "progress", role: "progressbar", "aria-valuenow": Math.round(pct),
                       "aria-valuemin": 0, "aria-valuemax": 100},
        widthOf(h("div", {class: "progress-fill"}), pct),
        h("span", {class: "progress-text", text: Math.round(pct) + " %" +
          (num(p.total) ? " (" + fmtNum(p.current) + " / " + fmtNum(p.total) + ")" : "")}));
    }
    function pre(label, text, cls) {
      if (text === undefined || text === null || text === "") return null;
      return section(label, h("pre", {class: cls || "", text: typeof text === "string" ? text :
        raw(text)}));
    }
    // A time the store clamped (too far ahead of its arrival, or older than retention).
    function clampedTime(ts, reported) {
      if (reported === undefined || reported === null || reported === "") return fmtTime(ts);
      return h("span", {class: "clamped"}, fmtTime(ts),
        h("span", {class: "note", title: "the reported time lay outside the clock-skew " +
          "allowance; the task is filed at its arrival time"}, " reported ", fmtTime(reported)));
    }
    function reportedBy(e) {
      var reports = Array.isArray(e.reports) ? e.reports : [];
      if (reports.length > 1) {
        return reports.map(function (r, j) {
          var later = num(r && r.timestamp) !== null && num(e.timestamp) !== null &&
            num(r.timestamp) !== num(e.timestamp) ? " (" + fmtDelta(e.timestamp, r.timestamp) +
            ")" : "";
          return [j ? " + " : "", String(r && r.source) + later];
        });
      }
      return (Array.isArray(e.sources) ? e.sources : []).map(String).join(" + ");
    }
    // Tasks this one was retried as: their state, kept live (id -> state or null).
    var watched = {}, watchedCount = 0, MAX_WATCHED = 10;
    function setLiveBadge(el, state) {
      clear(el);
      append(el, state ? badge(state) : h("span", {class: "muted", text: "…"}));
    }
    function liveBadge(taskId) {
      var el = h("span", {class: "live-state", "data-task-id": taskId});
      setLiveBadge(el, watched[taskId]);
      return el;
    }
    function watch(taskId, state) {
      if (!taskId || taskId === id) return;
      var known = taskId in watched;
      if (!watched[taskId]) watched[taskId] = state || null;
      if (known || watchedCount >= MAX_WATCHED) return;
      watchedCount++;
      subscribe({room: "task", id: taskId});  // its snapshot, then its changes
    }
    function watchedChanged(t) {
      watched[t.id] = t.state;
      document.querySelectorAll(".live-state").forEach(function (el) {
        if (el.getAttribute("data-task-id") === t.id) setLiveBadge(el, t.state);
      });
    }
    function timelineRow(e, i, tl) {
      var first = tl[0].timestamp;
      var prev = i ? tl[i - 1].timestamp : null;
      var sincePrev = i ? fmtDelta(prev, e.timestamp, e.skew) : "—";
      var sinceFirst = i ? fmtDelta(first, e.timestamp) : "—";
      // An operator's retry is not a state of this task: who did it, and the new task.
      var retried = e.state === "RETRIED";
      return h("tr", {class: (num(e.skew) > 0 ? "skewed" : "") + (retried ? " retried-entry" : "")},
        h("td", null, badge(e.state)),
        h("td", null, clampedTime(e.timestamp, e.reported_timestamp)),
        h("td", {class: "num" + (/^clocks/.test(sincePrev) ? " warn-text" : ""), text: sincePrev}),
        h("td", {class: "num" + (/^clocks/.test(sinceFirst) ? " warn-text" : ""),
                 text: sinceFirst}),
        h("td", {text: retried ? "retried by " + (e.hostname || "?") : e.hostname || "—"}),
        h("td", null, reportedBy(e), retried && e.retried_as ? [" → ",
          taskLink(String(e.retried_as))] : null),
        h("td", {class: "num", text: e.retries === null || e.retries === undefined ? "—" :
          fmtNum(e.retries)}));
    }
    function lineage(task) {
      var parts = [];
      if (task.retry_of) {
        parts.push(h("span", {class: "retry-of"}, "retry of ", taskLink(String(task.retry_of))));
      }
      if (task.retried_as) {
        var newId = String(task.retried_as);
        watch(newId);
        parts.push(h("span", {class: "retried-as"}, "retried as ", taskLink(newId), " ",
          liveBadge(newId), task.retried_by ? " (by " + task.retried_by + ")" : null));
      }
      return parts.length ? h("p", {class: "lineage"}, parts) : null;
    }
    function render(task) {
      var tl = (Array.isArray(task.timeline) ? task.timeline : []).filter(function (e) {
        return e && typeof e === "object"; });
      var columns = ["State", "Time", "Since previous", "Since first", "Host", "Reported by",
        "Attempt"];
      var timeline = table(columns, tl.map(safeRow(timelineRow, columns.length)));
      var wait = num(task.started) !== null && num(task.received) !== null ?
        fmtDelta(task.received, task.started).replace(/^\+/, "") : null;
      var links = [];
      if (task.parent_id) links.push(["Parent", taskLink(task.parent_id)]);
      if (task.root_id && task.root_id !== id) links.push(["Root", taskLink(task.root_id)]);
      if (task.retry_of) links.push(["Retry of", taskLink(String(task.retry_of))]);
      if (task.retried_as) {
        links.push(["Retried as", [taskLink(String(task.retried_as)), " ",
          liveBadge(String(task.retried_as))]]);
      }
      if (task.retried_by) links.push(["Retried by", String(task.retried_by)]);
      var children = (Array.isArray(task.children) ? task.children : []).map(function (c) {
        return h("li", null, taskLink(c)); });
      var group = (Array.isArray(task.group) ? task.group : []).filter(function (g) {
        return g !== id; }).map(function (g) { return h("li", null, taskLink(g)); });
      var truncated = Object.keys(task).filter(function (k) { return /_truncated$/.test(k); })
        .map(function (k) { return h("div", {class: "warn-note", text: k.replace(/_truncated$/, "") +
          " was " + fmtNum(task[k]) + " bytes; the stored copy is cut"}); });
      var clamped = Object.keys(task).some(function (k) { return /_reported$/.test(k); }) ||
        tl.some(function (e) { return e.reported_timestamp !== undefined &&
          e.reported_timestamp !== null; });
      var skewed = tl.some(function (e) { return num(e.skew) > 0; });
      var notes = truncated.slice();
      if (clamped) notes.push(h("div", {class: "warn-note clamp-note", text: "Some times " +
        "reported for this task lay too far ahead of their arrival (or before the retention " +
        "window); they are shown at their arrival time, with the reported time beside them."}));
      if (skewed) notes.push(h("div", {class: "warn-note skew-note", text: "The hosts that " +
        "reported this task disagree about the time: the timeline keeps the lifecycle's order " +
        "and says by how much the clocks disagree instead of showing negative durations."}));
      if (CFG.hide_args) notes.push(h("p", {class: "muted hidden-note", text: "Arguments and " +
        "results are hidden from viewers on this monitor."}));
      var lost = task.worker_online === false && task.state && !NOT_RUNNING[task.state] ?
        h("span", {class: "badge state-lost", title: "the worker that ran this task stopped " +
          "sending heartbeats", text: "worker offline: this task may be lost"}) : null;
      var stuck = task.stuck === true ? h("span", {class: "badge flag-stuck flag",
        title: String(task.stuck_reason || ""), text: "stuck"}) : null;
      // What the Redis broker will do with it (monitor/lost.py: unacked, visibility timeout)
      var brokerInfo = task.broker && typeof task.broker === "object" ? task.broker : {};
      if (task.stuck === true) notes.push(h("div", {class: "warn-note stuck-note",
        text: "Stuck: " + String(task.stuck_reason || "")}));
      if (brokerInfo.redelivery) notes.push(h("div", {class: "warn-note redelivery-note",
        text: "Will be redelivered: its message has been unacknowledged for " +
          fmtDuration(brokerInfo.redelivery.age) + ", longer than the broker's visibility " +
          "timeout; the next worker that restores unacked messages puts it back in its queue."}));
      if (brokerInfo.eta_beyond_visibility) notes.push(h("div", {class: "warn-note eta-note",
        text: "Will run twice: its ETA is further from its delivery than the broker's " +
          "visibility timeout, so the message is redelivered before it runs."}));
      var shown = {id: 1, state: 1, name: 1, timeline: 1, children: 1, group: 1, args: 1, kwargs: 1,
        args_json: 1, kwargs_json: 1, result: 1, exception: 1, traceback: 1, progress: 1,
        children_rows: 1, worker_online: 1, retry_of: 1, retried_as: 1, retried_by: 1, body: 1,
        publish_headers: 1, lost: 1, stuck: 1, stuck_reason: 1, broker: 1};
      var other = Object.keys(task).filter(function (k) { return !shown[k] &&
        !/_truncated$/.test(k) && !(/_reported$/.test(k) && TIME_FIELDS.test(k.slice(0, -9))); })
        .sort().map(function (k) {
          var v = task[k];
          if (k === "worker") return [k, workerLink(v)];
          if (TIME_FIELDS.test(k)) return [k, clampedTime(v, task[k + "_reported"])];
          if (/_reported$/.test(k)) return [k, fmtTime(v)];
          return [k, typeof v === "object" ? raw(v) : String(v)];
        });
      clear(top);
      append(top, [
        h("div", {class: "title-row"}, h("h1", {class: "name"}, task.name ?
          taskNameLink(task.name) : "unknown task"),
          badge(task.state), lost, stuck),
        h("p", {class: "mono muted", text: id}), lineage(task)]);
      clear(body);
      append(body, [
        progressBar(task), notes,
        h("div", {class: "two"},
          section("Summary", kv([["State", [badge(task.state), lost ? " " : null, lost ?
            lost.cloneNode(true) : null]], ["Worker", task.worker ?
            workerLink(task.worker) : null], ["Queue wait", wait], ["Runtime", task.runtime ?
            fmtDuration(task.runtime) : null], ["Retries", task.retries]].concat(links))),
          section("Details", kv(other))),
        section("Timeline", timeline),
        pre("Arguments", pretty(task.args_json !== undefined ? task.args_json : task.args)),
        pre("Keyword arguments", pretty(task.kwargs_json !== undefined ? task.kwargs_json :
          task.kwargs)),
        pre("Result", pretty(task.result)),
        pre("Exception", task.exception, "bad"),
        pre("Traceback", task.traceback, "bad"),
        children.length ? section("Children", h("ul", {class: "links"}, children)) : null,
        group.length ? section("Same group", h("ul", {class: "links"}, group)) : null]);
      refreshActions(task);
    }

    // -- the task's actions (operators only: the bar does not exist for anyone else) ------
    var top = h("div"), body = h("div");
    var bar = CAN_ACT ? h("div", {class: "actions-bar", "aria-label": "actions"}) : null;
    var lastTask = null, actionsFor = null;
    function refreshActions(task) {
      if (!bar) return;
      var key = String(task.state) + "|" + String(task.retried_as || "");
      if (key === actionsFor) return;
      actionsFor = key;  // asked once per state, not once per push
      api("/tasks/" + enc(id) + "/actions").then(drawActions, function (e) {
        actionsFor = null;
        clear(bar);
        append(bar, h("span", {class: "muted", text: "Actions unavailable: " + e.message}));
      });
    }
    function again() { actionsFor = null; if (lastTask) refreshActions(lastTask); }
    function drawActions(a) {
      a = a && typeof a === "object" ? a : {};
      var reasons = [];
      function make(key, label, open, cls) {
        var spec = a[key] && typeof a[key] === "object" ? a[key] : {};
        var allowed = spec.allowed === true;
        var reason = String(spec.reason || "not possible now");
        if (!allowed) {
          reasons.push(h("li", {"data-action": key}, h("strong", {text: label + ": "}), reason));
        }
        return button(label, allowed ? open : null, cls, {"data-action": key,
          disabled: allowed ? null : "disabled", title: allowed ? null : reason});
      }
      var retry = a.retry && typeof a.retry === "object" ? a.retry : {};
      var retriedBefore = retry.allowed !== true && (retry.code === "retried" ||
        /already retried/.test(String(retry.reason || "")));
      var buttons = [make("revoke", "Revoke", openRevoke),
        make("terminate", "Terminate", openTerminate, "btn-danger-outline"),
        retriedBefore ? button("Retry again", function () { openRetry(true); }, "btn-primary",
          {"data-action": "retry-again"}) :
          make("retry", "Retry", function () { openRetry(false); }, "btn-primary")];
      clear(bar);
      append(bar, [h("div", {class: "action-buttons"}, buttons),
        reasons.length ? h("ul", {class: "reasons"}, reasons) : null]);
    }
    function taskName() { return (lastTask && lastTask.name) || "unknown task"; }
    function subject() {
      return h("p", {class: "dialog-subject"}, h("strong", {class: "name", text: taskName()}),
        " ", h("code", {text: id}), " ", badge(lastTask && lastTask.state));
    }
    function openRevoke() {
      confirmAction({title: "Revoke " + taskName() + "?", confirm: "Revoke",
        body: [subject(), h("p", {text: "Workers will not run this task. A worker already " +
          "running it lets it finish (Terminate stops it)."})],
        run: function () { return post("/tasks/" + enc(id) + "/revoke", {}); },
        show: repliesView, done: again});
    }
    function openTerminate() {
      var sig = h("select", {name: "signal"}, SIGNALS.map(function (s) {
        return h("option", {value: s, text: s}); }));
      confirmAction({title: "Terminate " + taskName() + "?", confirm: "Terminate", danger: true,
        body: [subject(), h("p", {text: "Revoke it and signal the pool process running it. " +
          "SIGTERM lets the task clean up; SIGKILL does not."}), field("Signal", sig)],
        run: function () {
          return post("/tasks/" + enc(id) + "/terminate", {signal: sig.value}); },
        show: repliesView, done: again});
    }
    function openRetry(force) {
      var t = lastTask || {};
      var args = argsText(t);
      confirmAction({title: (force ? "Retry again: " : "Retry ") + taskName() + "?",
        confirm: force ? "Retry again" : "Retry",
        body: [subject(), h("p", {text: "Publish it again as it was published: the same " +
          "arguments, to the same queue" + (t.queue ? " (" + t.queue + ")" : "") + ". The " +
          "rerun gets a new task id; the two task pages link to each other."}),
          args ? h("pre", {class: "dialog-args", text: args}) : null,
          force && t.retried_as ? h("p", {class: "warn-note"}, "It was retried already, as ",
            taskLink(String(t.retried_as)), ". This runs it once more.") : null],
        run: function () {
          return post("/tasks/" + enc(id) + "/retry", force ? {force: true} : {}); },
        show: function (r) {
          var newId = String(r && r.id);
          watch(newId, "PENDING");
          return h("p", {class: "retried"}, "Retried as ", taskLink(newId), " ",
            liveBadge(newId), r && r.queue ? " on queue " + r.queue : null, ".");
        },
        done: again});
    }

    function load() {
      return api("/tasks/" + enc(id)).then(function (t) {
        lastTask = t;
        schedule(function () { render(t); });
      }).catch(function (e) { clear(body); append(body, errorBox(e)); });
    }
    on("task", function (d) {
      var t = d && d.task;
      if (!t || typeof t !== "object") return;
      if (t.id === id || t.id === undefined) {
        // pushes carry no broker view (the API adds it): keep the last one fetched
        if (t.broker === undefined && lastTask && lastTask.broker && NOT_RUNNING[t.state] !==
            1) t = Object.assign({}, t, {broker: lastTask.broker});
        lastTask = t;
        schedule(function () { render(t); });
      } else if (t.id in watched) {
        watchedChanged(t);
      }
    });
    clear(main);
    append(main, [top, refusalLine(), bar, body]);
    handlers.refresh = load;
    subscribe({room: "task", id: id});
    load();
  };

  var WORKER_COLUMNS = ["Status", "Worker", "Active", "Processed", "Succeeded", "Failed", "Load",
                        "Pool", "Queues", "Last heartbeat"];
  var workerRow = safeRow(drawWorkerRow, WORKER_COLUMNS.length);
  function drawWorkerRow(w) {
    var load = "—";
    try { load = JSON.parse(w.loadavg).map(function (x) { return Number(x).toFixed(2); })
      .join(" "); } catch (e) { /* absent or not a list */ }
    var queues = "—";
    try { queues = JSON.parse(w.queues).join(", "); } catch (e) { /* absent */ }
    return h("tr", {"data-host": w.hostname},
      h("td", null, h("span", {class: "dot " + (w.online ? "dot-on" : "dot-off"),
        title: w.status}), h("span", {class: "status", text: w.status})),
      h("td", null, workerLink(w.hostname)),
      h("td", {class: "num", text: fmtNum(w.active || 0)}),
      h("td", {class: "num", text: fmtNum(w.processed || 0)}),
      h("td", {class: "num", text: fmtNum(w.succeeded || 0)}),
      h("td", {class: "num", text: fmtNum(w.failed || 0)}),
      h("td", {class: "mono", text: load}),
      h("td", {text: (w.pool || "—") + (w.concurrency ? " × " + w.concurrency : "")}),
      h("td", {text: queues}),
      h("td", null, agoEl(w.last_heartbeat), w.last_heartbeat_reported ? h("span",
        {class: "clamped"}, h("span", {class: "note", title: "the reported time lay outside " +
          "the clock-skew allowance"}, " reported ", fmtTime(w.last_heartbeat_reported))) :
        null));
  }

  pages.workers = function () {
    function render(list) {
      clear(main);
      append(main, [h("div", {class: "title-row"}, h("h1", {text: "Workers"}),
        h("span", {class: "muted", text: list.filter(function (w) { return w.online; }).length +
          " online · " + list.length + " known"})),
        list.length ? h("div", {class: "card flush"}, table(WORKER_COLUMNS, list.map(workerRow))) :
          h("p", {class: "muted", text: "No worker has been seen yet."})]);
    }
    function load() {
      return api("/workers").then(function (b) {
        schedule(function () { render(Array.isArray(b.workers) ? b.workers : []); }); })
        .catch(function (e) { clear(main); append(main, errorBox(e)); });
    }
    on("workers", function (d) {
      schedule(function () { render(d && Array.isArray(d.workers) ? d.workers : []); }); });
    handlers.refresh = load;
    subscribe({room: "workers"});
    load();
    // online/offline is a matter of time passing too (no heartbeat = no event)
    setInterval(load, 5000);
  };

  pages.worker = function () {
    var host = CFG.params.hostname;
    var hostPath = "/workers/" + enc(host);
    var worker = null, rows = new Map();
    // What only the worker can say (registered tasks, active queues, pool processes):
    // Celery's inspect, asked for operators only (it is a broadcast to the workers).
    var inspected = null, inspectError = null, taskNames = [];
    var head = h("div"), queuesHolder = h("div"), tasksHolder = h("div");
    var controls = CAN_ACT ? workerControls() : null;

    function render() {
      clear(head);
      append(head, [h("div", {class: "title-row"}, h("h1", {text: host}),
        worker ? h("span", {class: "badge " + (worker.online ? "state-success" : "state-failure"),
          text: worker.status}) : null),
        worker ? h("div", {class: "card flush"}, table(WORKER_COLUMNS, [workerRow(worker)])) :
          h("p", {class: "muted", text: "No heartbeat from this worker yet."})]);
      renderQueues();
      clear(tasksHolder);
      append(tasksHolder, section("Tasks (newest first)", table(TASK_COLUMNS,
        Array.from(rows.values()).map(taskRow))));
    }

    // -- queues: what it consumes, their depth, cancel and purge ----------------------
    function storedQueues() {
      try {
        var q = JSON.parse(worker && worker.queues);
        return Array.isArray(q) ? q.filter(function (x) { return typeof x === "string"; }) : [];
      } catch (e) { return []; }
    }
    function activeQueues() {
      if (inspected && Array.isArray(inspected.active_queues)) {
        return inspected.active_queues.map(function (q) {
          return q && typeof q === "object" ? String(q.name) : String(q); });
      }
      return storedQueues();
    }
    var queuesKey = null;
    function renderQueues() {
      var list = activeQueues();
      var key = JSON.stringify([list, !!inspected]);
      if (key === queuesKey) return;  // the depths are read once per change of the list
      queuesKey = key;
      clear(queuesHolder);
      var columns = CAN_ACT ? ["Queue", "Depth", ""] : ["Queue", "Depth"];
      var trs = list.map(function (q) {
        var depth = h("td", {class: "depth", text: "…"});
        api("/queues/" + enc(q)).then(function (r) { depth.textContent = fmtNum(r && r.depth); },
          function (e) { depth.textContent = "—"; depth.title = e.message; });
        return h("tr", {"data-queue": q}, h("td", {class: "mono", text: q}), depth,
          CAN_ACT ? h("td", {class: "row-actions"},
            button("Cancel consumer", function () { consumer("cancel", q); }, "btn-small",
              {"data-action": "cancel-consumer"}),
            button("Purge…", function () { purgeQueue(q, function () { queuesKey = null;
              renderQueues(); }); }, "btn-small btn-danger-outline", {"data-action": "purge"})) :
            null);
      });
      append(queuesHolder, section(inspected ? "Queues it consumes" :
        "Queues it consumed when it started", trs.length ? table(columns, trs) :
        h("p", {class: "muted", text: "No queue known."})));
    }

    // -- the controls (operators only: absent for everyone else) ---------------------
    var taskSelect, poolLine;
    function fillTaskNames() {
      if (!taskSelect) return;
      var chosen = taskSelect.value;
      var registered = inspected && Array.isArray(inspected.registered) ?
        inspected.registered.map(function (n) { return String(n).split(" ")[0]; }) : [];
      var others = taskNames.filter(function (n) { return registered.indexOf(n) < 0; });
      clear(taskSelect);
      append(taskSelect, [h("option", {value: "", text: "choose a task"}),
        registered.length ? h("optgroup", {label: "registered on this worker"},
          registered.map(function (n) { return h("option", {value: n, text: n}); })) : null,
        others.length ? h("optgroup", {label: registered.length ? "other task names seen" :
          "task names seen"}, others.map(function (n) { return h("option", {value: n,
          text: n}); })) : null]);
      taskSelect.value = chosen;
    }
    function drawPool() {
      if (!poolLine) return;
      var pool = inspected && inspected.stats && inspected.stats.pool;
      var procs = pool && Array.isArray(pool.processes) ? pool.processes.length : null;
      // "celery.concurrency.prefork:TaskPool" -> "prefork"
      var kind = pool && pool.implementation ?
        String(pool.implementation).split(":")[0].split(".").pop() : "";
      poolLine.textContent = inspectError ? "Could not ask the worker: " + inspectError :
        !inspected ? "Asking the worker…" : "Pool: " + (kind ? kind + ", " : "") +
          (procs !== null ? procs + " processes" : "processes unknown") +
          (pool && num(pool["max-concurrency"]) !== null ? " (max-concurrency " +
            fmtNum(pool["max-concurrency"]) + ")" : "");
    }
    function inspectNow() {
      return getJSON(CFG.prefix + "/api/workers", {workername: host, refresh: 1})
        .then(function (body) {
          inspected = body && body[host] && typeof body[host] === "object" ? body[host] : null;
          inspectError = null;
        }, function (e) { inspectError = e.message; })
        .then(function () { fillTaskNames(); drawPool(); queuesKey = null; renderQueues(); });
    }
    // The monitor reuses an inspect of the last few seconds: ask again after that too.
    function inspectSoon() { inspectNow(); setTimeout(inspectNow, 6000); }
    function need(input, message) {
      input.setCustomValidity(input.value.trim() ? "" : message);
      return input.reportValidity();
    }
    function params(list) {
      return h("dl", {class: "kv dialog-params"}, list.filter(function (p) {
        return p[1] !== null && p[1] !== undefined && p[1] !== ""; }).map(function (p) {
        return [h("dt", {text: p[0]}), h("dd", {class: "mono", text: String(p[1])})]; }));
    }
    // One worker action: a dialog naming it and its parameters, then each reply.
    function act(o) {
      confirmAction({title: o.title, confirm: o.confirm, danger: o.danger, typed: o.typed,
        body: [h("p", null, o.what, " on worker ", h("strong", {text: host}), "."),
          o.params ? params(o.params) : null, o.note ? h("p", {class: "muted",
            text: o.note}) : null],
        run: function () { return post(hostPath + o.path, o.body || {}); },
        show: repliesView,
        done: function () { inspectSoon(); }});
    }
    function consumer(kind, queue) {
      act({title: (kind === "add" ? "Add a consumer for " : "Cancel the consumer of ") + queue,
        confirm: kind === "add" ? "Add consumer" : "Cancel consumer",
        what: kind === "add" ? "Start consuming from queue " + queue :
          "Stop consuming from queue " + queue,
        path: "/consumers/" + kind, body: {queue: queue}});
    }
    function workerControls() {
      taskSelect = h("select", {name: "task_name", "aria-label": "task name"},
        h("option", {value: "", text: "choose a task"}));
      var rate = h("input", {name: "rate", placeholder: "10/m, 0.5/s, 100", size: 12});
      var soft = h("input", {name: "soft", type: "number", min: "0", step: "any",
                             placeholder: "seconds"});
      var hard = h("input", {name: "hard", type: "number", min: "0", step: "any",
                             placeholder: "seconds"});
      var n = h("input", {name: "n", type: "number", min: "1", step: "1", value: "1"});
      var max = h("input", {name: "max", type: "number", min: "1", step: "1",
                            placeholder: "max"});
      var min = h("input", {name: "min", type: "number", min: "0", step: "1",
                            placeholder: "min"});
      var queue = h("input", {name: "queue", placeholder: "queue name"});
      poolLine = h("p", {class: "muted pool-line", text: "Asking the worker…"});
      function limits(kind) {
        if (!need(taskSelect, "choose a task")) return;
        var name = taskSelect.value;
        if (kind === "rate") {
          act({title: "Rate limit of " + name, confirm: "Set rate limit",
            what: rate.value.trim() ? "Limit " + name + " to " + rate.value.trim() :
              "Remove the rate limit of " + name, params: [["task", name],
              ["rate", rate.value.trim() || "none"]],
            path: "/rate-limit", body: {task_name: name, rate: rate.value.trim() || null}});
        } else {
          act({title: "Time limits of " + name, confirm: "Set time limits",
            what: "Set the time limits of " + name, params: [["task", name],
              ["soft", soft.value ? soft.value + " s" : "none"],
              ["hard", hard.value ? hard.value + " s" : "none"]],
            path: "/time-limit", body: {task_name: name, soft: numberOr(soft.value),
                                        hard: numberOr(hard.value)}});
        }
      }
      function pool(kind) {
        if (kind === "grow" || kind === "shrink") {
          act({title: (kind === "grow" ? "Grow" : "Shrink") + " the pool of " + host,
            confirm: kind === "grow" ? "Grow" : "Shrink",
            what: (kind === "grow" ? "Add " : "Remove ") + (n.value || "?") + " pool process" +
              (n.value === "1" ? "" : "es"), path: "/pool/" + kind, body: {n: numberOr(n.value)}});
        } else if (kind === "autoscale") {
          act({title: "Autoscale " + host, confirm: "Autoscale",
            what: "Autoscale between " + (min.value || "?") + " and " + (max.value || "?") +
              " processes", path: "/pool/autoscale",
            body: {max: numberOr(max.value), min: numberOr(min.value)}});
        } else {
          act({title: "Restart the pool of " + host, confirm: "Restart pool", danger: true,
            what: "Replace every pool process (running tasks are lost unless they finish)",
            path: "/pool/restart", note: "Workers need worker_pool_restarts=True for this."});
        }
      }
      function shutdown() {
        act({title: "Shut down " + host + "?", confirm: "Shut down", danger: true, typed: host,
          what: "Stop the worker process (running tasks finish first; nothing restarts it " +
            "unless a supervisor does)", path: "/shutdown"});
      }
      var card = h("section", {class: "card worker-actions"}, h("h2", {text: "Actions"}),
        h("div", {class: "control-row"}, h("span", {class: "control-title", text: "Task limits"}),
          field("Task", taskSelect),
          field("Rate", rate), button("Set rate limit", function () { limits("rate"); }, null,
            {"data-action": "rate-limit"}),
          field("Soft", soft), field("Hard", hard), button("Set time limits", function () {
            limits("time"); }, null, {"data-action": "time-limit"})),
        h("div", {class: "control-row"}, h("span", {class: "control-title", text: "Pool"}),
          field("Processes", n), button("Grow", function () { pool("grow"); }, null,
            {"data-action": "pool-grow"}),
          button("Shrink", function () { pool("shrink"); }, null, {"data-action": "pool-shrink"}),
          field("Max", max), field("Min", min),
          button("Autoscale", function () { pool("autoscale"); }, null,
            {"data-action": "autoscale"}),
          button("Restart pool", function () { pool("restart"); }, "btn-danger-outline",
            {"data-action": "pool-restart"})),
        poolLine,
        h("div", {class: "control-row"}, h("span", {class: "control-title", text: "Consumers"}),
          field("Queue", queue), button("Add consumer", function () {
            if (need(queue, "name a queue")) consumer("add", queue.value.trim()); }, null,
            {"data-action": "add-consumer"}),
          button("Cancel consumer", function () {
            if (need(queue, "name a queue")) consumer("cancel", queue.value.trim()); }, null,
            {"data-action": "cancel-consumer-named"})),
        h("div", {class: "control-row"}, h("span", {class: "control-title", text: "Worker"}),
          button("Shut down…", shutdown, "btn-danger", {"data-action": "shutdown"})));
      [taskSelect, queue].forEach(function (el) {
        el.addEventListener("input", function () { el.setCustomValidity(""); });
      });
      return card;
    }

    function load() {
      return api("/workers/" + enc(host)).then(function (b) {
        worker = b.worker; rows = new Map();
        (b.tasks || []).forEach(function (r) { rows.set(r.id, r); });
        schedule(render);
      }).catch(function (e) { clear(head); append(head, errorBox(e)); });
    }
    on("worker", function (d) {
      if (d.worker) worker = d.worker;
      var merged = new Map();
      (d.rows || []).forEach(function (r) { if (!rows.has(r.id)) merged.set(r.id, r); });
      rows.forEach(function (v, k) { merged.set(k, v); });
      (d.rows || []).forEach(function (r) { merged.set(r.id, r); });
      rows = merged;
      schedule(render);
    });
    clear(main);
    var charts = window.MonitorCharts.historySection(toolkit, "History", {worker: host});
    append(main, [head, refusalLine(), charts.el, queuesHolder, controls, tasksHolder]);
    handlers.refresh = function () { load(); charts.load(); };  // pushes were missed
    subscribe({room: "worker", hostname: host});
    load();
    if (CAN_ACT) {
      api("/task-names").then(function (b) {
        taskNames = Array.isArray(b && b.names) ? b.names.map(String) : [];
        fillTaskNames();
      }).catch(function () { /* the registered names are enough */ });
      inspectNow();
    }
    setInterval(load, 5000);
  };

  // Local <input type=datetime-local> text <-> epoch seconds (the tasks and bulk filters).
  function toEpoch(local) {
    var t = local ? new Date(local).getTime() : NaN;
    return isFinite(t) ? String(t / 1000) : "";
  }
  function toLocalInput(epoch) {
    var d = dateOf(epoch);
    if (d === null) return "";
    var local = new Date(d.getTime() - d.getTimezoneOffset() * 60000);
    // <input type=datetime-local> takes four-digit years only
    return isNaN(local.getTime()) || Math.abs(local.getUTCFullYear()) > 9999 ? "" :
      local.toISOString().slice(0, 16);
  }
  function options(list, selected) {
    return list.map(function (o) {
      var value = Array.isArray(o) ? o[0] : o, text = Array.isArray(o) ? o[1] : o;
      return h("option", {value: value, text: text, selected: value === selected ? "selected" :
        null});
    });
  }

  // -- bulk: filter -> dry run (count, sample) -> confirm -> live progress -> summary ------
  var BULK_STATES = CFG.bulk_states;
  var BULK_MAX = 1000;
  pages.bulk = function () {
    var url = new URLSearchParams(location.search);
    var preview = h("div", {class: "bulk-preview"}), progress = h("div", {class: "bulk-progress"});
    var summary = h("div", {class: "bulk-summary"});
    var heading = h("div", {class: "title-row"}, h("h1", {text: "Bulk actions"}),
      h("span", {class: "muted", text: "retry or revoke every task a filter selects"}));
    clear(main);
    append(main, [heading, refusalLine()]);
    if (!CAN_ACT) {
      if (!CFG.actions_refusal) {
        append(main, h("p", {class: "muted", text: "Bulk actions need an operator."}));
      }
      return;
    }
    var action = h("select", {name: "action", "aria-label": "action"},
      options([["retry", "Retry"], ["revoke", "Revoke"]], url.get("action") || "retry"));
    var state = h("select", {name: "state", "aria-label": "state"});
    var name = h("select", {name: "name", "aria-label": "task name"},
      h("option", {value: "", text: "any task"}));
    var worker = h("input", {name: "worker", placeholder: "worker", value: url.get("worker") || ""});
    var since = h("input", {name: "since", type: "datetime-local", title: "updated since",
                            value: toLocalInput(url.get("since"))});
    var until = h("input", {name: "until", type: "datetime-local", title: "updated until",
                            value: toLocalInput(url.get("until"))});
    var limit = h("input", {name: "limit", type: "number", min: "1", max: String(BULK_MAX),
                            step: "1", value: url.get("limit") || String(BULK_MAX),
                            title: "act on at most this many tasks (newest first)"});
    function fillStates(selected) {
      var list = BULK_STATES[action.value] || [];
      clear(state);
      append(state, options([["", action.value === "retry" ? "any failed (" + list.join(", ") +
        ")" : "any unfinished (" + list.join(", ") + ")"]].concat(list), selected || ""));
    }
    fillStates(url.get("state"));
    var wantedName = url.get("name") || "";
    api("/task-names").then(function (b) {
      var names = Array.isArray(b && b.names) ? b.names.map(String) : [];
      if (wantedName && names.indexOf(wantedName) < 0) names.unshift(wantedName);
      append(name, options(names, wantedName));
    }).catch(function () {
      if (wantedName) append(name, options([wantedName], wantedName));
    });
    var spec = null;  // the filter the shown dry run counted: what a run acts on
    function current() {
      var f = {state: state.value, name: name.value, worker: worker.value.trim(),
               since: toEpoch(since.value), until: toEpoch(until.value)};
      Object.keys(f).forEach(function (k) {
        if (f[k] === "") delete f[k];
        else if (k === "since" || k === "until") f[k] = Number(f[k]);
      });
      return {action: action.value, filter: f, limit: numberOr(limit.value) || BULK_MAX};
    }
    function describe(s) {
      var f = s.filter, parts = [];
      parts.push("state " + (f.state || (s.action === "retry" ? "failed" : "unfinished")));
      if (f.name) parts.push("name " + f.name);
      if (f.worker) parts.push("worker " + f.worker);
      if (f.since !== undefined) parts.push("updated since " + fmtTime(f.since).textContent);
      if (f.until !== undefined) parts.push("until " + fmtTime(f.until).textContent);
      return parts.join(", ");
    }
    function stale() {  // the form changed: the dry run shown no longer describes it
      spec = null;
      clear(preview);
    }
    [action, state, name, worker, since, until, limit].forEach(function (el) {
      el.addEventListener("change", stale);
    });
    action.addEventListener("change", function () { fillStates(""); });
    var dry = h("button", {type: "submit", class: "btn btn-primary", text: "Dry run"});
    var form = h("form", {class: "filters bulk-form", onsubmit: function (ev) {
      ev.preventDefault();
      var s = current();
      dry.disabled = true;
      clear(preview);
      append(preview, h("p", {class: "muted", text: "Counting…"}));
      post("/bulk", {action: s.action, filter: s.filter, dry_run: true, limit: s.limit})
        .then(function (r) { spec = s; drawPreview(r || {}, s); }, function (e) {
          clear(preview);
          append(preview, errorBox(e));
        }).then(function () { dry.disabled = false; });
    }}, action, state, name, worker, since, until, field("at most", limit), dry);
    append(main, [form, preview, progress, summary]);

    function drawPreview(r, s) {
      clear(preview);
      var count = num(r.count) || 0, cap = num(r.limit) || s.limit;
      var skipped = r.skipped && typeof r.skipped === "object" ? Object.keys(r.skipped) : [];
      var sample = Array.isArray(r.sample) ? r.sample : [];
      var acting = Math.min(count, cap);
      var verb = s.action === "retry" ? "Retry" : "Revoke";
      append(preview, h("section", {class: "card"}, h("h2", {text: "Dry run"}),
        h("p", {class: "bulk-count"}, h("strong", {text: fmtNum(count)}),
          " task" + (count === 1 ? "" : "s") + " match" + (count === 1 ? "es" : "") + " (" +
          describe(s) + ")" + (r.complete === false ? ", and more may: the selection " +
          "stopped scanning the index" : "") + "."),
        count > cap ? h("p", {class: "warn-note", text: "A run acts on the newest " +
          fmtNum(cap) + " of them; run it again for the rest."}) : null,
        skipped.length ? h("p", {class: "muted bulk-skipped", text: "Not counted, a retry " +
          "would refuse them: " + skipped.map(function (k) { return k + " " +
            fmtNum(r.skipped[k]); }).join(", ") + "."}) : null,
        sample.length ? [h("p", {class: "muted", text: "Sample (newest first):"}),
          h("ul", {class: "links sample"}, sample.map(function (tid) {
            return h("li", null, taskLink(String(tid))); }))] : null,
        acting ? button(verb + " " + fmtNum(acting) + " task" + (acting === 1 ? "" : "s") + "…",
          function () { confirmRun(s, acting); }, s.action === "retry" ? "btn-primary" :
            "btn-danger", {"data-action": "bulk-run"}) : null));
    }
    function confirmRun(s, acting) {
      var verb = s.action === "retry" ? "Retry" : "Revoke";
      confirmAction({title: verb + " " + fmtNum(acting) + " tasks?", confirm: verb,
        danger: s.action === "revoke",
        body: [h("p", {text: verb + " the newest " + fmtNum(acting) + " tasks matching " +
          describe(s) + "."}), s.action === "retry" ? h("p", {class: "muted", text: "Each " +
          "is published again as it was published, with a new id; tasks retried before or " +
          "that cannot be rebuilt faithfully are skipped."}) : h("p", {class: "muted",
            text: "Workers will not run them; running ones finish."})],
        run: function () {
          var headers = socket.connected && socket.id ? {"X-Socket-Sid": socket.id} : {};
          return post("/bulk", {action: s.action, filter: s.filter, dry_run: false,
                                limit: s.limit}, headers);
        },
        show: function (r) { return h("p", {text: "Started job " + String(r && r.job) + "."}); },
        done: function (r) { if (r && r.job) follow(String(r.job), s, acting); },
        closeOnDone: true});
    }

    // Progress comes with Socket.IO "job" events; GET /jobs/<id> fills any gap.
    var job = null, early = {};
    on("job", function (d) {
      if (!d || typeof d !== "object") return;
      if (job && d.job === job.id) update(d);
      else early[String(d.job)] = d;
    });
    function follow(id, s, acting) {
      job = {id: id, spec: s, total: acting, done: 0, finished: false, last: Date.now()};
      clear(summary);
      clear(progress);
      job.bar = h("div", {class: "progress", role: "progressbar", "aria-valuemin": 0,
                          "aria-valuemax": 100, "aria-valuenow": 0},
        widthOf(h("div", {class: "progress-fill"}), 0),
        h("span", {class: "progress-text", text: "starting…"}));
      append(progress, h("section", {class: "card"}, h("h2", null, s.action === "retry" ?
        "Retrying" : "Revoking", h("span", {class: "job-id", text: " · job " + id})), job.bar));
      // What the dry run counted is being acted on: no second run from it.
      preview.querySelectorAll("button[data-action=bulk-run]").forEach(function (b) {
        b.replaceWith(h("p", {class: "muted", text: "Running; dry run again to see what is " +
          "left afterwards."}));
      });
      if (early[id]) update(early[id]);
      early = {};
      poll();
    }
    function poll() {
      if (!job || job.finished) return;
      var mine = job;
      setTimeout(function () {
        if (mine !== job || mine.finished) return;
        if (Date.now() - mine.last < 1500) { poll(); return; }
        api("/jobs/" + enc(mine.id)).then(function (d) {
          if (mine === job && d) update(d);
        }).catch(function () { /* the next round asks again */ }).then(poll);
      }, 1000);
    }
    function update(d) {
      if (!job) return;
      job.last = Date.now();
      var total = num(d.total), done = num(d.done) || 0;
      if (total !== null) job.total = total;
      job.done = done;
      var pct = job.total ? 100 * done / job.total : (d.finished ? 100 : 0);
      job.bar.setAttribute("aria-valuenow", String(Math.round(pct)));
      widthOf(job.bar.querySelector(".progress-fill"), pct);
      job.bar.querySelector(".progress-text").textContent = fmtNum(done) + " / " +
        fmtNum(job.total) + (d.finished ? " · finished" : "");
      if (d.finished && !job.finished) {
        job.finished = true;
        if (d.result || d.error) drawSummary(d);
        else api("/jobs/" + enc(job.id)).then(drawSummary, function (e) {
          append(summary, errorBox(e)); });
      }
    }
    function drawSummary(d) {
      clear(summary);
      if (d.error) {
        append(summary, errorBox(typeof d.error === "object" && d.error.error ?
          String(d.error.error) : raw(d.error)));
        return;
      }
      var r = d.result && typeof d.result === "object" ? d.result : {};
      var results = Array.isArray(r.results) ? r.results : [];
      var failed = results.filter(function (x) { return x && x.error; });
      var okOnes = results.filter(function (x) { return x && !x.error; });
      var verb = r.action === "revoke" ? "Revoked" : "Retried";
      append(summary, h("section", {class: "card"}, h("h2", {text: "Summary"}),
        h("p", {class: "bulk-done"}, h("strong", {text: verb + " " + fmtNum(okOnes.length)}),
          " of " + fmtNum(results.length) + " task" + (results.length === 1 ? "" : "s") +
          (failed.length ? "; " + fmtNum(failed.length) + " refused" : "") + "."),
        r.capped ? h("p", {class: "warn-note", text: "More tasks matched than the limit: " +
          "run it again for the rest."}) : null,
        failed.length ? table(["Task", "Why not"], failed.slice(0, 100).map(function (x) {
          return h("tr", null, h("td", {class: "mono"}, taskLink(String(x.id))),
            h("td", {class: "bad-value", text: String(x.error)}));
        })) : null,
        okOnes.some(function (x) { return x.new_id; }) ? [h("p", {class: "muted",
          text: "New tasks (first 20):"}), h("ul", {class: "links"}, okOnes.slice(0, 20)
          .map(function (x) { return h("li", null, taskLink(String(x.id), String(x.id)),
            " → ", taskLink(String(x.new_id))); }))] : null,
        r.replies || r.timeouts ? repliesView(r) : null));
    }
  };

  // -- audit log: newest first, cursor paging, filters by action and user ------------------
  function compact(v, limit) {
    var s;
    if (v === null || v === undefined || v === "") return "";
    try { s = typeof v === "string" ? v : JSON.stringify(v); } catch (e) { s = raw(v); }
    s = String(s);
    return s.length > limit ? s.slice(0, limit) + "…" : s;
  }
  function auditTarget(entry) {
    var target = String(entry.target || "");
    if (!target) return h("span", {class: "muted", text: "—"});
    var action = String(entry.action || "");
    if (/^task\./.test(action)) return taskLink(target);
    if (/^worker\./.test(action)) return workerLink(target);
    return h("span", {class: "mono", text: target});
  }
  function auditOutcome(entry) {
    var status = entry.status;
    var refused = !entry.ok && (status === "refused" || status === 401 || status === 403 ||
      status === 429);
    var kind = entry.ok ? "ok" : refused ? "refused" : "failed";
    return h("span", {class: "outcome"}, h("span", {class: "badge audit-" + kind, text: kind}),
      status !== "" && status !== null && status !== undefined ?
        h("span", {class: "muted", text: " " + String(status)}) : null);
  }
  var AUDIT_COLUMNS = ["When", "Who", "Action", "Target", "Parameters", "From", "Result",
                       "Outcome"];
  var auditRow = safeRow(function (e) {
    var params = compact(e.params, 2000), result = compact(e.result, 2000);
    return h("tr", {"data-id": e.id, class: e.ok ? "audit-row-ok" : "audit-row-refused"},
      h("td", null, fmtTime(e.at), h("br"), agoEl(e.at)),
      h("td", null, h("span", {class: "who-cell", text: String(e.who || "?")}), " ",
        h("span", {class: "who-role role-" + String(e.role || ""), text: String(e.role || "")}),
        h("div", {class: "muted small", text: "via " + String(e.via || "?") +
          (e.token ? " (token " + String(e.token) + ")" : "")})),
      h("td", {class: "mono", text: String(e.action || "")}),
      h("td", {class: "audit-target"}, auditTarget(e)),
      h("td", {class: "mono clip", title: params, text: compact(e.params, 160) +
        (e.params_truncated ? " (cut from " + fmtNum(e.params_truncated) + " bytes)" : "")}),
      h("td", {class: "mono", text: e.addr ? String(e.addr) : "—"}),
      h("td", {class: "mono clip", title: result, text: compact(e.result, 160)}),
      h("td", null, auditOutcome(e)));
  }, AUDIT_COLUMNS.length);
  pages.audit = function () {
    var url = new URLSearchParams(location.search);
    var filters = {action: url.get("action") || "", who: url.get("who") || ""};
    var tbody = h("tbody"), status = h("span", {class: "muted"});
    var cursor = null, shown = 0, actionsSeen = {};
    var more = button("Older", function () { page(cursor); }, "more", {hidden: "hidden"});
    var actionList = h("datalist", {id: "audit-actions"});
    var actionInput = h("input", {name: "action", placeholder: "action, e.g. task.retry",
                                  list: "audit-actions", value: filters.action});
    var whoInput = h("input", {name: "who", placeholder: "user", value: filters.who});
    var form = h("form", {class: "filters", onsubmit: function (ev) {
      ev.preventDefault();
      location.search = qs({action: actionInput.value.trim(), who: whoInput.value.trim()});
    }}, actionInput, actionList, whoInput, h("button", {type: "submit", text: "Apply"}),
      h("a", {href: CFG.prefix + "/audit", class: "reset", text: "Reset"}));
    clear(main);
    append(main, [h("div", {class: "title-row"}, h("h1", {text: "Audit log"}), status,
      button("Newest", function () { page(null); }, "btn-small newest")),
      form, h("div", {class: "card flush"}, h("table", {class: "grid audit"},
        h("thead", null, h("tr", null, AUDIT_COLUMNS.map(function (c) {
          return h("th", {text: c}); }))), tbody)), more]);
    function page(before) {
      more.disabled = true;
      return api("/audit", {limit: 50, before: before, action: filters.action,
                            who: filters.who}).then(function (b) {
        if (!before) { clear(tbody); shown = 0; }
        var entries = Array.isArray(b && b.entries) ? b.entries : [];
        entries.forEach(function (e) {
          if (!e || typeof e !== "object") return;
          tbody.appendChild(auditRow(e));
          shown++;
          var a = String(e.action || "");
          if (a && !actionsSeen[a]) {
            actionsSeen[a] = 1;
            actionList.appendChild(h("option", {value: a}));
          }
        });
        cursor = b && b.next_cursor ? String(b.next_cursor) : null;
        more.hidden = !cursor;
        status.textContent = fmtNum(shown) + " entr" + (shown === 1 ? "y" : "ies") + " shown" +
          (cursor ? "" : " · the oldest kept");
        if (!shown) {
          tbody.appendChild(h("tr", null, h("td", {colspan: AUDIT_COLUMNS.length,
            class: "muted", text: "No entry" + (filters.action || filters.who ?
              " matches." : " yet: every attempted action is recorded here.")})));
        }
      }).catch(function (e) {
        clear(tbody);
        tbody.appendChild(h("tr", null, h("td", {colspan: AUDIT_COLUMNS.length},
          errorBox(e))));
      }).then(function () { more.disabled = false; });
    }
    page(null);
  };

  // The formatters, for the browser tests and the console.
  window.monitorFormat = {num: num, raw: raw, fmtNum: fmtNum, fmtDuration: fmtDuration,
    fmtDelta: fmtDelta, ago: ago, fmtTime: function (ts) { return fmtTime(ts).textContent; },
    enc: enc};
  window.addEventListener("beforeunload", unsubscribeAll);

  // Pages in files of their own (static/monitor/pages/<page>.js, listed by the
  // page route and loaded before this file) register a function in
  // window.MonitorPages[<page>]; it gets this toolkit, the same helpers the
  // pages above use, so no page reimplements escaping, time formats or rooms.
  var toolkit = {CFG: CFG, main: main, h: h, append: append, clear: clear, link: link,
    enc: enc, taskLink: taskLink, workerLink: workerLink, taskNameLink: taskNameLink,
    badge: badge, num: num, raw: raw,
    fmtNum: fmtNum, fmtTime: fmtTime, fmtDuration: fmtDuration, fmtDelta: fmtDelta, ago: ago,
    agoEl: agoEl, qs: qs, getJSON: getJSON, api: api, post: post, pretty: pretty,
    errorBox: errorBox, schedule: schedule, subscribe: subscribe, unsubscribe: unsubscribe,
    on: on, handlers: handlers,
    table: table, kv: kv, section: section, safeRow: safeRow, taskRow: taskRow,
    TASK_COLUMNS: TASK_COLUMNS, button: button, confirmAction: confirmAction,
    repliesView: repliesView, field: field, numberOr: numberOr, refusalLine: refusalLine,
    CAN_ACT: CAN_ACT, STATES: STATES};
  window.Monitor = toolkit;
  var external = window.MonitorPages || {};
  if (pages[CFG.page]) pages[CFG.page]();
  else if (typeof external[CFG.page] === "function") external[CFG.page](toolkit);
  else pages.overview();
})();
