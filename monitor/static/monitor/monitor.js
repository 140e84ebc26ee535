/* celery monitor: every page of the dashboard.
 *
 * Data comes from the REST API (/api/v1) and stays live through Socket.IO
 * rooms. Every value is put in the DOM with textContent / createElement,
 * never as HTML: task names, args and exceptions are user data.
 * Renders are batched (at most one per animation frame and RENDER_MS) so a
 * burst of updates never freezes the tab.
 */
(function () {
  "use strict";

  var CFG = JSON.parse(document.getElementById("monitor-config").textContent);
  var main = document.getElementById("main");
  var conn = document.getElementById("conn");
  var RENDER_MS = 250;
  var STATES = ["PENDING", "RECEIVED", "STARTED", "PROGRESS", "RETRY", "SUCCESS", "FAILURE",
                "REVOKED", "REJECTED"];

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
  function link(path, text) { return h("a", {href: CFG.prefix + path, text: text}); }
  function taskLink(id, text) { return link("/task/" + encodeURIComponent(id), text || id); }
  function workerLink(host) { return link("/worker/" + encodeURIComponent(host), host); }
  function badge(state) {
    return h("span", {class: "badge state-" + String(state || "UNKNOWN").toLowerCase(),
                      text: state || "?"});
  }

  // -- time -------------------------------------------------------------------
  function num(v) { var n = parseFloat(v); return isFinite(n) ? n : null; }
  function fmtTime(ts) {
    var n = num(ts);
    if (n === null) return h("span", {class: "muted", text: "—"});
    var d = new Date(n * 1000);
    var local = d.toLocaleString(undefined, {year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit"}) + "." +
      String(d.getMilliseconds()).padStart(3, "0");
    return h("time", {datetime: d.toISOString(), title: d.toISOString().replace("T", " ")
      .replace("Z", " UTC"), text: local});
  }
  function fmtDuration(seconds) {
    var s = num(seconds);
    if (s === null) return "—";
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms";
    if (s < 60) return s.toFixed(2) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return (s / 3600).toFixed(1) + " h";
  }
  function ago(ts) {
    var n = num(ts);
    if (n === null) return "never";
    var s = Math.max(0, Date.now() / 1000 - n);
    if (s < 60) return Math.round(s) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  function agoEl(ts) { return h("span", {class: "ago", "data-ts": ts || "", text: ago(ts)}); }
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
  function api(path, params) {
    return fetch(CFG.api + path + qs(params), {headers: {Accept: "application/json"}})
      .then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) throw new Error(body && body.error ? body.error : "HTTP " + r.status);
          return body;
        });
      });
  }
  function pretty(text) {
    if (text === undefined || text === null) return null;
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch (e) { return String(text); }
  }
  function errorBox(err) { return h("div", {class: "error", text: String(err.message || err)}); }

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
        if (f) f();
      });
    }, wait);
  }

  // -- live connection -------------------------------------------------------------
  var rooms = [];
  var handlers = {};
  var socket = io({path: CFG.socketio_path, transports: ["websocket", "polling"],
                   reconnectionDelayMax: 5000});
  function setConn(kind, text) {
    conn.className = "conn conn-" + kind;
    conn.textContent = text;
  }
  function subscribe(payload) {
    rooms.push(payload);
    if (socket.connected) socket.emit("subscribe", payload);
  }
  function unsubscribeAll() {
    rooms.forEach(function (p) { if (socket.connected) socket.emit("unsubscribe", p); });
    rooms = [];
  }
  function on(event, fn) { handlers[event] = fn; }
  ["overview", "workers", "tasks", "task", "worker"].forEach(function (event) {
    socket.on(event, function (data) { if (handlers[event]) handlers[event](data); });
  });
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
    if (a && a !== "()" && a !== "[]") parts.push(a);
    if (k && k !== "{}") parts.push(k);
    return parts.join(" ");
  }
  function taskRow(row) {
    var tr = h("tr", {"data-id": row.id},
      h("td", null, badge(row.state)),
      h("td", {class: "name", text: row.name || "—"}),
      h("td", {class: "mono"}, taskLink(row.id)),
      h("td", null, row.worker ? workerLink(row.worker) : h("span", {class: "muted", text: "—"})),
      h("td", null, fmtTime(row.received || row.sent || row.timestamp)),
      h("td", {class: "num", text: row.runtime ? fmtDuration(row.runtime) : "—"}),
      h("td", {class: "args mono", text: argsText(row), title: argsText(row)}));
    return tr;
  }
  var TASK_COLUMNS = ["State", "Name", "Task id", "Worker", "Received", "Runtime", "Arguments"];

  // -- charts (inline SVG, no library needed for two series) --------------------------------
  var SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    var el = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    return el;
  }
  function barChart(points, opts) {
    var W = 560, H = 160, P = 28;
    var max = Math.max(opts.min || 1, Math.max.apply(null, points.map(function (p) {
      return p.value; })));
    var root = svg("svg", {viewBox: "0 0 " + W + " " + H, class: "chart", role: "img",
                           "aria-label": opts.label});
    var bw = (W - P) / Math.max(points.length, 1);
    [0, 0.5, 1].forEach(function (f) {
      var y = H - 18 - f * (H - 30);
      root.appendChild(svg("line", {x1: P, x2: W, y1: y, y2: y, class: "axis"}));
      var t = svg("text", {x: P - 4, y: y + 4, class: "tick", "text-anchor": "end"});
      t.textContent = opts.format ? opts.format(max * f) : String(Math.round(max * f));
      root.appendChild(t);
    });
    points.forEach(function (p, i) {
      var bh = max ? (p.value / max) * (H - 30) : 0;
      var rect = svg("rect", {x: P + i * bw + 1, y: H - 18 - bh, width: Math.max(bw - 2, 1),
                              height: bh, class: opts.cls});
      var tip = svg("title", {});
      tip.textContent = new Date(p.minute * 1000).toLocaleTimeString() + ": " +
        (opts.format ? opts.format(p.value) : p.value);
      rect.appendChild(tip);
      root.appendChild(rect);
    });
    if (points.length) {
      [0, points.length - 1].forEach(function (i) {
        var t = svg("text", {x: P + i * bw + (i ? bw : 0), y: H - 4, class: "tick",
                             "text-anchor": i ? "end" : "start"});
        t.textContent = new Date(points[i].minute * 1000).toLocaleTimeString([], {
          hour: "2-digit", minute: "2-digit"});
        root.appendChild(t);
      });
    }
    return root;
  }

  // -- pages ---------------------------------------------------------------------------
  var pages = {};

  pages.overview = function () {
    var data = null;
    function render() {
      if (!data) return;
      var counts = data.counts || {};
      var cards = h("div", {class: "cards"},
        h("a", {class: "stat", href: CFG.prefix + "/workers"},
          h("span", {class: "label", text: "Workers online"}),
          h("span", {class: "value ok", text: data.workers.online}),
          h("span", {class: "sub", text: data.workers.offline + " offline"})),
        STATES.filter(function (s) { return s in counts || s === "PROGRESS"; })
          .filter(function (s) { return s !== "PROGRESS"; }).map(function (s) {
          return h("a", {class: "stat", href: CFG.prefix + "/tasks?state=" + s},
            h("span", {class: "label", text: s}),
            h("span", {class: "value state-text-" + s.toLowerCase(),
                        text: (counts[s] || 0).toLocaleString()}));
        }));
      var minutes = data.minutes || [];
      var throughput = minutes.map(function (m) {
        return {minute: m.minute, value: (m.succeeded || 0) + (m.failed || 0)}; });
      var failureRate = minutes.map(function (m) {
        var done = (m.succeeded || 0) + (m.failed || 0);
        return {minute: m.minute, value: done ? (m.failed || 0) / done : 0}; });
      var notes = [];
      Object.keys(data.dropped || {}).forEach(function (src) {
        if (data.dropped[src]) notes.push(h("div", {class: "warn-note",
          text: data.dropped[src].toLocaleString() + " " + src +
            " records dropped while Redis was unavailable"}));
      });
      if (data.malformed) notes.push(h("div", {class: "warn-note",
        text: data.malformed.toLocaleString() + " malformed events skipped"}));
      clear(main);
      append(main, [h("h1", {text: "Overview"}), notes, cards,
        h("div", {class: "two"},
          section("Throughput (tasks finished per minute, last hour)",
            barChart(throughput, {cls: "bar-ok", label: "throughput"})),
          section("Failure rate (per minute, last hour)",
            barChart(failureRate, {cls: "bar-bad", min: 0.01, label: "failure rate",
              format: function (v) { return Math.round(v * 100) + " %"; }}))),
        h("div", {class: "two"},
          section("Slowest task names (average runtime)", data.slowest.length ?
            table(["Name", "Average", "Runs"], data.slowest.map(function (r) {
              return h("tr", null, h("td", null, link("/tasks?name=" + encodeURIComponent(r.name),
                r.name)), h("td", {class: "num", text: fmtDuration(r.avg_runtime)}),
                h("td", {class: "num", text: r.count.toLocaleString()}));
            })) : h("p", {class: "muted", text: "No finished tasks in the last hour."})),
          section("Most failing task names", data.failing.length ?
            table(["Name", "Failures"], data.failing.map(function (r) {
              return h("tr", null, h("td", null, link("/tasks?state=FAILURE&name=" +
                encodeURIComponent(r.name), r.name)),
                h("td", {class: "num", text: r.failures.toLocaleString()}));
            })) : h("p", {class: "muted", text: "No failures in the last hour."})))]);
    }
    function load() {
      return api("/stats").then(function (d) { data = d; schedule(render); })
        .catch(function (e) { clear(main); append(main, errorBox(e)); });
    }
    on("overview", function (d) { data = d; schedule(render); });
    handlers.refresh = load;
    subscribe({room: "overview"});
    load();
  };

  pages.tasks = function () {
    var params = new URLSearchParams(location.search);
    var filters = {};
    ["state", "name", "worker", "since", "until", "q", "sort", "order"].forEach(function (k) {
      if (params.get(k)) filters[k] = params.get(k);
    });
    var rows = new Map();   // id -> row, in display order
    var nextCursor = null, total = null, liveOn = !filters.q && !filters.sort;
    var tbody, summary, more;

    function toEpoch(local) { return local ? String(new Date(local).getTime() / 1000) : ""; }
    function toLocalInput(epoch) {
      var n = num(epoch); if (n === null) return "";
      var d = new Date(n * 1000 - new Date().getTimezoneOffset() * 60000);
      return d.toISOString().slice(0, 16);
    }
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
      var f = h("form", {class: "filters", onsubmit: function (ev) {
        ev.preventDefault();
        var next = {state: state.value, name: name.value, worker: worker.value.trim(),
                    since: toEpoch(since.value), until: toEpoch(until.value), q: q.value.trim(),
                    sort: sort.value, order: sort.value === "name" ? "asc" : ""};
        location.search = qs(next);
      }}, state, name, worker, since, until, q, sort,
        h("button", {type: "submit", text: "Apply"}),
        h("a", {href: CFG.prefix + "/tasks", class: "reset", text: "Reset"}));
      [state, name, sort].forEach(function (el) {
        el.addEventListener("change", function () { f.requestSubmit(); });
      });
      return f;
    }
    function renderRows() {
      clear(tbody);
      rows.forEach(function (row) { tbody.appendChild(taskRow(row)); });
      summary.textContent = (total !== null ? total.toLocaleString() + " tasks" : rows.size +
        " shown") + (liveOn ? " · live" : "");
      more.hidden = !nextCursor;
    }
    function fetchPage(cursor) {
      var p = Object.assign({limit: 50, cursor: cursor}, filters);
      return api("/tasks", p).then(function (body) {
        if (!cursor) rows.clear();
        body.tasks.forEach(function (r) { rows.set(r.id, r); });
        nextCursor = body.next_cursor; total = body.total;
        schedule(renderRows);
      });
    }
    function upsert(list) {
      var fresh = new Map();
      list.forEach(function (r) {
        if (rows.has(r.id)) rows.set(r.id, r);
        else if (liveOn) fresh.set(r.id, r);
      });
      if (fresh.size) {
        if (total !== null) total += fresh.size;
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

  pages.task = function () {
    var id = CFG.params.id;
    function progressBar(task) {
      if (!task.progress) return null;
      var p; try { p = JSON.parse(task.progress); } catch (e) { return null; }
      var pct = null;
      if (p && num(p.total)) pct = 100 * num(p.current) / num(p.total);
      else if (p && num(p.percent) !== null) pct = num(p.percent);
      else if (p && num(p.progress) !== null) pct = num(p.progress) <= 1 ? num(p.progress) * 100 :
        num(p.progress);
      if (pct === null) return null;
      if (task.state === "SUCCESS") pct = 100;
      pct = Math.max(0, Math.min(100, pct));
      return h("div", {class: "progress", role: "progressbar", "aria-valuenow": Math.round(pct),
                       "aria-valuemin": 0, "aria-valuemax": 100},
        h("div", {class: "progress-fill", style: "width:" + pct.toFixed(1) + "%"}),
        h("span", {class: "progress-text", text: Math.round(pct) + " %" +
          (p.total ? " (" + p.current + " / " + p.total + ")" : "")}));
    }
    function pre(label, text, cls) {
      if (text === undefined || text === null || text === "") return null;
      return section(label, h("pre", {class: cls || "", text: text}));
    }
    function render(task) {
      var tl = task.timeline || [];
      var first = tl.length ? tl[0].timestamp : null;
      var timeline = table(["State", "Time", "Since previous", "Since first", "Host", "Reported by",
        "Attempt"], tl.map(function (e, i) {
        return h("tr", null, h("td", null, badge(e.state)), h("td", null, fmtTime(e.timestamp)),
          h("td", {class: "num", text: i ? "+" + fmtDuration(e.timestamp - tl[i - 1].timestamp) :
            "—"}),
          h("td", {class: "num", text: i ? "+" + fmtDuration(e.timestamp - first) : "—"}),
          h("td", {text: e.hostname || "—"}), h("td", {text: (e.sources || []).join(" + ")}),
          h("td", {class: "num", text: e.retries === null || e.retries === undefined ? "—" :
            e.retries}));
      }));
      var wait = num(task.started) !== null && num(task.received) !== null ?
        fmtDuration(num(task.started) - num(task.received)) : null;
      var links = [];
      if (task.parent_id) links.push(["Parent", taskLink(task.parent_id)]);
      if (task.root_id && task.root_id !== id) links.push(["Root", taskLink(task.root_id)]);
      var children = (task.children || []).map(function (c) { return h("li", null, taskLink(c)); });
      var group = (task.group || []).filter(function (g) { return g !== id; })
        .map(function (g) { return h("li", null, taskLink(g)); });
      var truncated = Object.keys(task).filter(function (k) { return /_truncated$/.test(k); })
        .map(function (k) { return h("div", {class: "warn-note", text: k.replace(/_truncated$/, "") +
          " was " + Number(task[k]).toLocaleString() + " bytes; the stored copy is cut"}); });
      var shown = {id: 1, state: 1, name: 1, timeline: 1, children: 1, group: 1, args: 1, kwargs: 1,
        args_json: 1, kwargs_json: 1, result: 1, exception: 1, traceback: 1, progress: 1,
        children_rows: 1};
      var other = Object.keys(task).filter(function (k) { return !shown[k] &&
        !/_truncated$/.test(k); }).sort().map(function (k) {
        var v = task[k];
        var isTime = /^(sent|received|started|succeeded|failed|retried|revoked|rejected|timestamp)$/
          .test(k);
        if (k === "worker") return [k, workerLink(v)];
        return [k, isTime ? fmtTime(v) : (typeof v === "object" ? JSON.stringify(v) : String(v))];
      });
      clear(main);
      append(main, [
        h("div", {class: "title-row"}, h("h1", {class: "name", text: task.name || "unknown task"}),
          badge(task.state)),
        h("p", {class: "mono muted", text: id}),
        progressBar(task), truncated,
        h("div", {class: "two"},
          section("Summary", kv([["State", badge(task.state)], ["Worker", task.worker ?
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
    }
    function load() {
      return api("/tasks/" + encodeURIComponent(id)).then(function (t) { schedule(function () {
        render(t); }); }).catch(function (e) { clear(main); append(main, errorBox(e)); });
    }
    on("task", function (d) { if (d && d.task) schedule(function () { render(d.task); }); });
    handlers.refresh = load;
    subscribe({room: "task", id: id});
    load();
  };

  function workerRow(w) {
    var load = "—";
    try { load = JSON.parse(w.loadavg).map(function (x) { return Number(x).toFixed(2); })
      .join(" "); } catch (e) { /* absent */ }
    var queues = "—";
    try { queues = JSON.parse(w.queues).join(", "); } catch (e) { /* absent */ }
    return h("tr", {"data-host": w.hostname},
      h("td", null, h("span", {class: "dot " + (w.online ? "dot-on" : "dot-off"),
        title: w.status}), h("span", {class: "status", text: w.status})),
      h("td", null, workerLink(w.hostname)),
      h("td", {class: "num", text: w.active || 0}),
      h("td", {class: "num", text: Number(w.processed || 0).toLocaleString()}),
      h("td", {class: "num", text: Number(w.succeeded || 0).toLocaleString()}),
      h("td", {class: "num", text: Number(w.failed || 0).toLocaleString()}),
      h("td", {class: "mono", text: load}),
      h("td", {text: (w.pool || "—") + (w.concurrency ? " × " + w.concurrency : "")}),
      h("td", {text: queues}),
      h("td", null, agoEl(w.last_heartbeat)));
  }
  var WORKER_COLUMNS = ["Status", "Worker", "Active", "Processed", "Succeeded", "Failed", "Load",
                        "Pool", "Queues", "Last heartbeat"];

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
      return api("/workers").then(function (b) { schedule(function () { render(b.workers); }); })
        .catch(function (e) { clear(main); append(main, errorBox(e)); });
    }
    on("workers", function (d) { schedule(function () { render(d.workers || []); }); });
    handlers.refresh = load;
    subscribe({room: "workers"});
    load();
    // online/offline is a matter of time passing too (no heartbeat = no event)
    setInterval(load, 5000);
  };

  pages.worker = function () {
    var host = CFG.params.hostname;
    var worker = null, rows = new Map();
    function render() {
      clear(main);
      append(main, [h("div", {class: "title-row"}, h("h1", {text: host}),
        worker ? h("span", {class: "badge " + (worker.online ? "state-success" : "state-failure"),
          text: worker.status}) : null),
        worker ? h("div", {class: "card flush"}, table(WORKER_COLUMNS, [workerRow(worker)])) :
          h("p", {class: "muted", text: "No heartbeat from this worker yet."}),
        section("Tasks (newest first)", table(TASK_COLUMNS, Array.from(rows.values()).map(taskRow)))]);
    }
    function load() {
      return api("/workers/" + encodeURIComponent(host)).then(function (b) {
        worker = b.worker; rows = new Map();
        (b.tasks || []).forEach(function (r) { rows.set(r.id, r); });
        schedule(render);
      }).catch(function (e) { clear(main); append(main, errorBox(e)); });
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
    handlers.refresh = load;
    subscribe({room: "worker", hostname: host});
    load();
    setInterval(load, 5000);
  };

  window.addEventListener("beforeunload", unsubscribeAll);
  (pages[CFG.page] || pages.overview)();
})();
