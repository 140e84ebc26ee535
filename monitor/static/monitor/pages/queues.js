// Queues page (issue 10): every known queue's depth, consumers and oldest waiting
// message from the sampler's last sample, a history chart of the selected queue,
// queue wait per task name, and a purge button for operators. Live through the
// "queues" room (the sampler pushes each sample); the first load reads the API.
(window.MonitorPages = window.MonitorPages || {}).queues = function (M) {
  var h = M.h, WINDOWS = ["15m", "1h", "24h", "7d"];
  var params = new URLSearchParams(location.search);
  var state = {data: null, selected: params.get("queue"), window: params.get("window") || "1h",
               history: null, historyError: null, error: null};
  if (WINDOWS.indexOf(state.window) < 0) state.window = "1h";

  function fmtAge(seconds) {
    var s = M.num(seconds);
    return s === null ? "—" : M.fmtDuration(s);
  }
  // Ticks fit the chart's narrow margin: "45s", "12m", "3.5h".
  function shortAge(v) {
    var s = M.num(v) || 0;
    if (s < 60) return (s < 10 ? s.toFixed(1) : Math.round(s)) + "s";
    if (s < 3600) return Math.round(s / 60) + "m";
    return (s < 36000 ? (s / 3600).toFixed(1) : Math.round(s / 3600)) + "h";
  }
  // One bar per step of the window (a step without a sample is an empty one), so the
  // time axis is the window's, however few samples there are yet.
  function windowSlots(hist, pts) {
    var step = M.num(hist.step), from = M.num(hist.from), to = M.num(hist.to);
    if (!step || from === null || to === null || (to - from) / step > 10000) return pts;
    var byT = {};
    pts.forEach(function (p) { byT[p.t] = p; });
    var out = [];
    for (var t = from; t < to; t += step) out.push(byT[t] || {t: t, depth: 0, oldest_age: 0});
    return out;
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
    loadHistory();
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
  function historyCard() {
    if (!state.selected) return null;
    var buttons = h("div", {class: "windows"}, WINDOWS.map(function (w) {
      return M.button(w, function () {
        state.window = w; params.set("window", w);
        history.replaceState(null, "", location.pathname + "?" + params.toString());
        load();  // the queue wait table covers the window too
        loadHistory();
      }, w === state.window ? "btn-primary" : null, {"data-window": w});
    }));
    var body;
    if (state.historyError) body = M.errorBox(state.historyError);
    else if (!state.history) body = h("p", {class: "muted", text: "Loading…"});
    else {
      var pts = state.history.points || [];
      var slots = windowSlots(state.history, pts);
      var depth = slots.map(function (p) { return {minute: p.t, value: p.depth}; });
      var age = slots.map(function (p) { return {minute: p.t, value: p.oldest_age}; });
      body = pts.length ? h("div", {class: "two"},
        h("div", null, h("h3", {text: "Depth"}),
          M.barChart(depth, {cls: "bar-ok", label: "depth of " + state.selected})),
        h("div", null, h("h3", {text: "Oldest message's age"}),
          M.barChart(age, {cls: "bar-warn", label: "oldest age of " + state.selected,
            format: shortAge}))) :
        h("p", {class: "muted", text: "No sample of this queue in this window yet."});
    }
    return M.section("History of " + state.selected, buttons, body);
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
  function loadHistory() {
    if (!state.selected) return;
    var name = state.selected;
    M.api("/queues/" + M.enc(name) + "/history", {window: state.window}).then(function (r) {
      if (name !== state.selected) return;
      state.history = r; state.historyError = null; M.schedule(render);
    }).catch(function (e) { state.historyError = e; M.schedule(render); });
    M.schedule(render);
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
