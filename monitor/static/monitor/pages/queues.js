// Queues page (issue 10): every known queue's depth, consumers and oldest waiting
// message from the sampler's last sample, a history chart of the selected queue,
// queue wait per task name, and a purge button for operators. Live through the
// "queues" room (the sampler pushes each sample); the first load reads the API.
// The history charts are charts.js's (window.MonitorCharts, the vendored uPlot), like
// the overview's: a time axis over the window, legends, the window selector, dark mode.
(window.MonitorPages = window.MonitorPages || {}).queues = function (M) {
  var h = M.h, Charts = window.MonitorCharts;
  var params = new URLSearchParams(location.search);
  var state = {data: null, selected: params.get("queue"), window: Charts.windowFromUrl(),
               history: null, historyError: null, error: null};

  function fmtAge(seconds) {
    var s = M.num(seconds);
    return s === null ? "—" : M.fmtDuration(s);
  }
  // Ticks fit the chart's narrow margin: "45s", "12m", "3.5h".
  function shortAge(v) {
    var s = M.num(v) || 0;
    if (s === 0) return "0";
    if (s < 60) return (s < 10 ? s.toFixed(1) : Math.round(s)) + "s";
    if (s < 3600) return Math.round(s / 60) + "m";
    return (s < 36000 ? (s / 3600).toFixed(1) : Math.round(s / 3600)) + "h";
  }
  // One x per step of the window, null where no sample was stored (a gap in the line,
  // not a zero), so the time axis is the window's however few samples there are yet.
  function windowSlots(hist) {
    var pts = Array.isArray(hist.points) ? hist.points : [];
    var step = M.num(hist.step), from = M.num(hist.from), to = M.num(hist.to);
    var byT = {}, ts = [];
    pts.forEach(function (p) { if (p && M.num(p.t) !== null) byT[p.t] = p; });
    if (!step || from === null || to === null || to <= from || (to - from) / step > 10000) {
      ts = Object.keys(byT).map(Number).sort(function (a, b) { return a - b; });
    } else {
      for (var t = from; t < to; t += step) ts.push(t);
    }
    function values(key) {
      return ts.map(function (t) { return byT[t] ? M.num(byT[t][key]) : null; });
    }
    return {t: ts, depth: values("depth"), age: values("oldest_age")};
  }
  function sourceText(row) {
    var src = (row && row.sources) || {};
    return ["depth", "consumers", "oldest_age"].map(function (k) {
      return k.replace("_", " ") + ": " + (src[k] || "unknown");
    }).join(" · ");
  }
  function purge(name) {
    var depth = h("p", {class: "queue-depth muted", text: "Reading the queue's depth…"});
    M.confirmAction({
      title: "Purge queue " + name, danger: true, confirm: "Purge",
      body: [h("p", null, "Delete every message waiting in queue ", h("code", {text: name}),
        ". Messages that workers hold already are not in the queue and stay."), depth],
      run: function () { return M.post("/queues/" + M.enc(name) + "/purge", {}); },
      show: function (r) {
        return h("p", {class: "purged", text: "Purged " + M.fmtNum(r && r.purged) + " of " +
          M.fmtNum(r && r.depth_before) + " messages from " + name + "."});
      },
      done: function () { load(); },
    });
    M.api("/queues/" + M.enc(name)).then(function (r) {
      depth.className = "queue-depth";
      depth.textContent = "It holds " + M.fmtNum(r && r.depth) + " messages now.";
    }).catch(function (e) {
      depth.className = "queue-depth bad-value";
      depth.textContent = "Its depth is unknown: " + e.message;
    });
  }
  function select(name) {
    state.selected = name;
    params.set("queue", name);
    history.replaceState(null, "", location.pathname + "?" + params.toString());
    state.history = null;
    newSelector();  // its links carry the queue now selected
    loadHistory();
    M.schedule(render);
  }
  function queueRow(row) {
    var name = String(row.name);
    var tr = h("tr", {"data-queue": name, class: name === state.selected ? "selected" : null},
      h("td", {class: "name"}, h("a", {href: "#", text: name, onclick: function (ev) {
        ev.preventDefault(); select(name); }})),
      h("td", {class: "num depth", text: row.depth === null || row.depth === undefined ?
        "unknown" : M.fmtNum(row.depth)}),
      h("td", {class: "num consumers", text: row.consumers === null ||
        row.consumers === undefined ? "unknown" : M.fmtNum(row.consumers)}),
      h("td", {class: "num oldest", text: fmtAge(row.oldest_age)}),
      h("td", {class: "muted small", text: (row.seen || []).join(", ")}),
      h("td", {class: "muted small", text: sourceText(row) + (row.missing ?
        " (the broker has no such queue)" : "")}),
      M.CAN_ACT ? h("td", null, M.button("Purge", function () { purge(name); }, "btn-danger",
        {"data-purge": name})) : null);
    if (M.num(row.consumers) === 0 && M.num(row.depth) > 0) tr.classList.add("no-consumer");
    return tr;
  }
  // The history block is made once and put back on every render (the same nodes: the
  // charts stay, and are only given new data).
  var hb = {title: h("h2", {class: "history-title"}), note: h("p", {class: "muted chart-note"}),
    head: h("div", {class: "history-head"}), selector: null, charts: {},
    depth: h("div", {class: "chart", "data-chart": "depth"}),
    age: h("div", {class: "chart", "data-chart": "oldest_age"})};
  hb.el = h("section", {class: "card history-section", "data-part": "history"}, hb.title,
    h("div", {class: "history-panel"}, hb.head, h("div", {class: "chart-grid"},
      h("div", {class: "chart-cell"}, h("h3", {text: "Depth (messages waiting)"}), hb.depth),
      h("div", {class: "chart-cell"}, h("h3", {text: "Oldest message's age"}), hb.age))));
  function newSelector() {
    var next = Charts.windowSelector(state.window, function (w) {
      state.window = w; params.set("window", w); state.history = null;
      history.replaceState(null, "", location.pathname + "?" + params.toString());
      M.schedule(render);
      load();  // the queue wait table covers the window too
      loadHistory();
    });
    if (hb.selector) hb.head.replaceChild(next, hb.selector);
    else hb.head.insertBefore(next, hb.head.firstChild);
    hb.selector = next;
  }
  newSelector();
  hb.head.appendChild(hb.note);
  function per(step) {
    return step === 60 ? "per minute" : step === 3600 ? "per hour, each hour's largest" : "";
  }
  function drawHistory() {
    M.append(M.clear(hb.title), ["History of ", h("span", {class: "mono queue-name",
      text: state.selected})]);
    hb.el.setAttribute("data-queue", state.selected);
    hb.el.setAttribute("data-window", state.window);
    M.clear(hb.note);
    if (state.historyError) {
      hb.el.setAttribute("data-loaded", "error");
      M.append(hb.note, M.errorBox(state.historyError));
      return;
    }
    if (!state.history) {
      hb.el.setAttribute("data-loaded", "false");
      hb.note.textContent = "Loading…";
      return;
    }
    var r = state.history, slots = windowSlots(r);
    var n = Array.isArray(r.points) ? r.points.length : 0;
    var unit = M.num(r.step) === 3600 ? "hour" : "minute";
    hb.note.textContent = n ? M.fmtNum(n) + " sampled " + unit + (n === 1 ? "" : "s") +
      " in this window (" + per(M.num(r.step)) + ")" :
      "No sample of this queue in this window yet.";
    var count = function (v) { return M.fmtNum(Math.round(v)); };
    var defs = [
      {key: "depth", box: hb.depth, data: {t: slots.t, series: [{label: "depth",
        color: "accent", values: slots.depth}]},
       opts: {yLabel: "messages", format: count, whole: true}},
      {key: "age", box: hb.age, data: {t: slots.t, series: [{label: "oldest message",
        color: "warn", values: slots.age}]},
       opts: {yLabel: "age", format: function (v) { return M.fmtDuration(v); },
              axisFormat: shortAge}}];
    defs.forEach(function (d) {
      if (hb.charts[d.key]) hb.charts[d.key].update(d.data, d.opts);
      else hb.charts[d.key] = Charts.timeseries(d.box, d.data, d.opts);
    });
    hb.el.setAttribute("data-loaded", "true");
  }
  function historyCard() {
    return state.selected ? hb.el : null;
  }
  function waitCard(rows) {
    if (rows === null || rows === undefined) {
      return M.section("Queue wait per task name",
        h("p", {class: "muted", text: "Needs the per-minute history (monitor.history)."}));
    }
    return M.section("Queue wait per task name (received − sent, " + state.window + ")",
      rows.length ? M.table(["Name", "Tasks", "p50", "p95", "p99"], rows.map(function (r) {
        return h("tr", null, h("td", {class: "name"}, M.link("/tasks?name=" + M.enc(r.name),
          r.name)), h("td", {class: "num", text: M.fmtNum(r.count)}),
          h("td", {class: "num", text: fmtAge(r.p50)}), h("td", {class: "num", text: fmtAge(r.p95)}),
          h("td", {class: "num", text: fmtAge(r.p99)}));
      })) : h("p", {class: "muted", text: "No task received in this window."}));
  }
  function render() {
    var main = M.clear(M.main);
    M.append(main, h("h1", {text: "Queues"}));
    if (state.error) { M.append(main, M.errorBox(state.error)); return; }
    var d = state.data;
    if (!d) { M.append(main, h("p", {class: "muted", text: "Loading…"})); return; }
    var rows = Array.isArray(d.queues) ? d.queues : [];
    M.append(main, h("p", {class: "muted sampled"}, d.sampled_at ?
      ["Sampled ", M.agoEl(d.sampled_at), " from the " + (d.broker || "?") +
       " broker, every " + M.fmtDuration(d.interval) + "."] :
      "No sample yet: the sampler runs in one serve process every " +
        M.fmtDuration(d.interval) + "."));
    if (d.error) M.append(main, h("div", {class: "warn-note", text: String(d.error)}));
    var age = M.num(d.sampled_at) === null ? null : Date.now() / 1000 - M.num(d.sampled_at);
    if (age !== null && age > 3 * (M.num(d.interval) || 10) + 5) {
      M.append(main, h("div", {class: "warn-note stale", text: "This sample is " +
        M.fmtDuration(age) + " old: the sampler has stopped (is a serve process running?)."}));
    }
    M.append(main, M.refusalLine());
    var columns = ["Queue", "Depth", "Consumers", "Oldest message", "Seen via", "Sources"];
    if (M.CAN_ACT) columns.push("");
    M.append(main, M.section("Known queues (" + M.fmtNum(rows.length) + ")", rows.length ?
      M.table(columns, rows.map(M.safeRow(queueRow, columns.length))) :
      h("p", {class: "muted", text: "No queue known yet."})));
    M.append(main, historyCard());
    M.append(main, waitCard(d.queue_wait));
    // Drawn once the block is in the page: a chart takes its holder's width.
    if (state.selected && hb.drawn !== state.history) { hb.drawn = state.history; drawHistory(); }
  }
  function load() {
    return M.api("/queues", {window: state.window}).then(function (d) {
      state.data = d; state.error = null;
      if (!state.selected && d.queues && d.queues.length) {
        var deepest = d.queues.slice().sort(function (a, b) {
          return (M.num(b.depth) || 0) - (M.num(a.depth) || 0); })[0];
        state.selected = deepest.name;
        loadHistory();
      }
      M.schedule(render);
    }).catch(function (e) { state.error = e; M.schedule(render); });
  }
  // One read at a time: a push that comes while one is on its way asks for one more
  // after it (the sampler may push faster than a 7 d window is read).
  var reading = false, again = false;
  function loadHistory() {
    if (!state.selected) return;
    if (reading) { again = true; return; }
    reading = true; again = false;
    var name = state.selected, w = state.window;
    function done() {
      reading = false;
      if (again || name !== state.selected || w !== state.window) loadHistory();
    }
    M.api("/queues/" + M.enc(name) + "/history", {window: w}).then(function (r) {
      if (name === state.selected && w === state.window) {
        state.history = r; state.historyError = null; hb.drawn = null; M.schedule(render);
      }
      done();
    }).catch(function (e) {
      if (name === state.selected && w === state.window) {
        state.historyError = e; hb.drawn = null; M.schedule(render);
      }
      done();
    });
  }
  M.handlers.refresh = function () { load(); loadHistory(); };
  // Each sample the sampler stores is pushed to the room: the table and the chart follow.
  M.on("queues", function (msg) {
    if (!msg || !Array.isArray(msg.queues)) return;
    var wait = state.data ? state.data.queue_wait : null;
    state.data = Object.assign({}, msg, {queue_wait: msg.queue_wait !== undefined ?
      msg.queue_wait : wait});
    M.schedule(render);
    loadHistory();
  });
  M.subscribe({room: "queues"});
  render();
  load();
};
