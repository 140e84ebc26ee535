/* celery monitor: history charts (window.MonitorCharts), drawn by the vendored uPlot.
 *
 * Loaded by the pages that chart history, after vendor/uPlot.iife.min.js and
 * before monitor.js; it needs nothing of monitor.js until a chart is drawn (the
 * toolkit M is passed in then). Under the page's Content-Security-Policy: no
 * inline style or script (uPlot sets el.style through the CSSOM, which CSP allows;
 * its stylesheet is a <link> to a file of ours). Every text (titles, labels,
 * legend values) goes in by textContent: uPlot's legend does so too.
 *
 *   MonitorCharts.timeseries(el, data, opts)  one chart of several series over time
 *   MonitorCharts.histogram(el, buckets, opts) a bar chart of runtime buckets
 *   MonitorCharts.windowSelector(current, onChange)  the 15m/1h/24h/7d buttons
 *   MonitorCharts.historyPanel(M, el, opts)   the four history charts of a page
 *   MonitorCharts.historySection(M, title, opts)  the same, as a block monitor.js re-appends
 *
 * Colours come from monitor.css's variables; when the system switches between
 * light and dark, every chart is drawn again in the new colours.
 */
(function () {
  "use strict";

  var WINDOWS = [["15m", "15 min"], ["1h", "1 hour"], ["24h", "24 hours"], ["7d", "7 days"]];
  var HEIGHT = 190;

  // uPlot's stylesheet, next to it in vendor/ (a file: style-src 'self' allows it).
  (function linkStylesheet() {
    var me = document.currentScript;
    if (!me || !me.src) return;
    var link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = me.src.replace(/charts\.js(\?.*)?$/, "vendor/uPlot.min.css");
    document.head.appendChild(link);
  })();

  function cssVar(name, fallback) {
    var v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return v || fallback;
  }
  function palette() {
    return {text: cssVar("--muted", "#6b7385"), line: cssVar("--line", "#e3e6ec"),
      ok: cssVar("--ok", "#1f9d55"), bad: cssVar("--bad", "#d64545"),
      warn: cssVar("--warn", "#c98a00"), accent: cssVar("--accent", "#2f6fdf"),
      info: cssVar("--info", "#6b55d6"), pending: cssVar("--pending", "#8a93a6")};
  }
  // "#1f9d55" -> "rgba(31,157,85,a)"; anything else is returned as it is.
  function alpha(color, a) {
    var m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(color);
    if (!m) return color;
    return "rgba(" + parseInt(m[1], 16) + "," + parseInt(m[2], 16) + "," +
      parseInt(m[3], 16) + "," + a + ")";
  }
  function finite(v) { return typeof v === "number" && isFinite(v) ? v : null; }

  // Every chart drawn, to draw again on a colour-scheme change or a resize.
  var charts = [];
  var scheme = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
  if (scheme && scheme.addEventListener) {
    scheme.addEventListener("change", function () {
      charts.slice().forEach(function (c) { c.redraw(); });
    });
  }
  var resizer = window.ResizeObserver ? new ResizeObserver(function (entries) {
    entries.forEach(function (entry) {
      charts.forEach(function (c) { if (c.el === entry.target) c.resize(); });
    });
  }) : null;

  function widthOf(el) { return Math.max(200, Math.floor(el.clientWidth || 500)); }

  // Tick steps of a count axis: whole numbers only (no "0.5 tasks").
  var WHOLE = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2.5e3, 5e3, 1e4, 2e4,
               5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 1e8, 1e9];
  function yAxis(colors, label, format, whole) {
    var axis = {label: label || "", labelSize: 18, stroke: colors.text, size: 62,
      grid: {stroke: colors.line, width: 1}, ticks: {stroke: colors.line, width: 1},
      values: function (u, splits) { return splits.map(function (v) { return format(v); }); }};
    if (whole) axis.incrs = WHOLE;
    return axis;
  }
  // Half a step of room on either side: the first and last bars (and the current
  // step's point, at the right edge) are drawn whole.
  function padded(u, min, max) {
    var xs = u.data[0] || [];
    var step = xs.length > 1 ? xs[1] - xs[0] : 1;
    if (finite(min) === null || finite(max) === null) return [0, 1];
    return [min - step / 2, max + step / 2];
  }
  function isolated(u, si) {
    var ys = u.data[si] || [], idxs = [];
    for (var i = 0; i < ys.length; i++) {
      if (ys[i] !== null && ys[i] !== undefined &&
          (i === 0 || ys[i - 1] === null || ys[i - 1] === undefined) &&
          (i === ys.length - 1 || ys[i + 1] === null || ys[i + 1] === undefined)) idxs.push(i);
    }
    return idxs.length ? idxs : null;
  }
  function fromZero(u, min, max) {
    var top = finite(max);
    return [0, top && top > 0 ? top * 1.1 : 1];
  }

  // One chart: el (an empty element, the chart fills its width), data {t: [epoch s],
  // series: [{label, values, color (a palette key), bars}]}, opts {yLabel,
  // format(value) -> legend text, axisFormat(value) -> tick text (default format),
  // whole (a count: whole-number ticks),
  // time(t) -> legend text of an x value, xValues (uPlot's axis values)}. Returns {el, plot, update(data), destroy()}.
  function timeseries(el, data, opts) {
    opts = opts || {};
    var format = opts.format || function (v) { return String(v); };
    var chart = {el: el, plot: null, data: data};
    el.classList.add("chart-box");
    function build() {
      var colors = palette();
      var d = chart.data || {t: [], series: []};
      var series = [{label: opts.xLabel || "time", value: function (u, t) {
        return t === null || t === undefined ? "—" : opts.time ? opts.time(t) :
          new Date(t * 1000).toLocaleString();
      }}];
      (d.series || []).forEach(function (s) {
        var color = colors[s.color] || s.color || colors.accent;
        var entry = {label: s.label, stroke: color, width: s.bars ? 1 : 2,
          fill: s.bars ? alpha(color, 0.55) : alpha(color, 0.08), spanGaps: false,
          // A value between two gaps (a lone minute with runs) is a dot, not nothing.
          points: {show: false, size: 5, filter: isolated},
          value: function (u, v) { return v === null || v === undefined ? "—" : format(v); }};
        if (s.bars && window.uPlot.paths && window.uPlot.paths.bars) {
          entry.paths = window.uPlot.paths.bars({size: [0.7, 40], align: 0});
          entry.points = {show: false};
        }
        series.push(entry);
      });
      var rows = [d.t || []].concat((d.series || []).map(function (s) {
        return (s.values || []).map(finite); }));
      if (chart.plot) chart.plot.destroy();
      while (el.firstChild) el.removeChild(el.firstChild);
      chart.plot = new window.uPlot({
        width: widthOf(el), height: opts.height || HEIGHT,
        scales: {x: {time: opts.timeAxis !== false, range: padded}, y: {range: fromZero}},
        axes: [{stroke: colors.text, grid: {stroke: colors.line, width: 1},
                ticks: {stroke: colors.line, width: 1}, values: opts.xValues},
               yAxis(colors, opts.yLabel, opts.axisFormat || format, opts.whole)],
        series: series,
        legend: {show: true, live: true},
        cursor: {y: false, points: {size: 6}, drag: {x: false, y: false}}
      }, rows, el);
      // What the browser tests and the curious read: how many points this chart holds.
      el.setAttribute("data-points", String(rows[0].length));
      el.setAttribute("data-series", String(rows.length - 1));
      // and how many of them have a value (a gauge's unsampled steps are gaps)
      el.setAttribute("data-values", rows.slice(1).map(function (ys) {
        return String(ys.filter(function (y) { return y !== null; }).length); }).join(","));
      el.setAttribute("data-sums", rows.slice(1).map(function (ys) {
        return String(Math.round(ys.reduce(function (a, y) { return a + (y || 0); }, 0) * 1000) /
          1000); }).join(","));
    }
    chart.redraw = build;
    chart.resize = function () {
      if (chart.plot) chart.plot.setSize({width: widthOf(el), height: opts.height || HEIGHT});
    };
    // New data (and optionally options: a new axis label when the step changes).
    chart.update = function (next, more) {
      chart.data = next;
      Object.keys(more || {}).forEach(function (k) { opts[k] = more[k]; });
      build();
    };
    chart.destroy = function () {
      if (chart.plot) chart.plot.destroy();
      chart.plot = null;
      var i = charts.indexOf(chart);
      if (i >= 0) charts.splice(i, 1);
      if (resizer) resizer.unobserve(el);
    };
    build();
    charts.push(chart);
    if (resizer) resizer.observe(el);
    return chart;
  }

  // Runtime histogram: buckets [{le: bound seconds or null (+Inf), count}], as bars
  // over their labels ("≤ 10 ms" ... "> 5 min").
  function histogram(el, buckets, opts) {
    opts = opts || {};
    var fmt = opts.duration || shortDuration;
    var list = Array.isArray(buckets) ? buckets : [];
    var labels = list.map(function (b, i) {
      var le = finite(b && b.le);
      if (le !== null) return "≤ " + fmt(le);
      var prev = i > 0 ? finite(list[i - 1] && list[i - 1].le) : null;
      return prev === null ? "any" : "> " + fmt(prev);
    });
    var xs = list.map(function (_, i) { return i; });
    return timeseries(el, {t: xs, series: [{label: opts.label || "tasks", color: "accent",
      bars: true, values: list.map(function (b) { return finite(b && b.count) || 0; })}]}, {
      timeAxis: false, yLabel: opts.yLabel || "tasks", xLabel: "runtime", whole: true,
      format: function (v) { return Math.round(v).toLocaleString(); },
      time: function (i) { return labels[i] === undefined ? "—" : labels[i]; },
      xValues: function (u, splits) {
        return splits.map(function (i) { return Number.isInteger(i) && labels[i] !== undefined ?
          labels[i] : ""; });
      }
    });
  }

  // A bucket bound in few characters: 10 ms, 2.5 s, 5 min, 2 h.
  function shortDuration(s) {
    var n = finite(s);
    if (n === null) return "—";
    if (n === 0) return "0";
    if (n < 0.001) return (Math.round(n * 1e6) / 1000) + " ms";
    if (n < 1) return Math.round(n * 1000) + " ms";
    if (n < 60) return (Math.round(n * 10) / 10) + " s";
    if (n < 3600) return (Math.round(n / 6) / 10) + " min";
    return (Math.round(n / 360) / 10) + " h";
  }

  // Links, not buttons: each is the page's address with that window (a reload or a
  // new tab shows it), and a page's buttons are its actions.
  function windowSelector(current, onChange) {
    var box = document.createElement("div");
    box.className = "window-select";
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", "time window");
    WINDOWS.forEach(function (w) {
      var a = document.createElement("a");
      var params = new URLSearchParams(location.search);
      params.set("window", w[0]);
      a.href = location.pathname + "?" + params.toString();
      a.className = "btn btn-small" + (w[0] === current ? " active" : "");
      a.setAttribute("data-window", w[0]);
      if (w[0] === current) a.setAttribute("aria-current", "true");
      a.textContent = w[1];
      a.addEventListener("click", function (ev) {
        if (ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;  // a new tab
        ev.preventDefault();
        Array.prototype.forEach.call(box.children, function (x) {
          var on = x === a;
          x.classList.toggle("active", on);
          if (on) x.setAttribute("aria-current", "true");
          else x.removeAttribute("aria-current");
        });
        onChange(w[0]);
      });
      box.appendChild(a);
    });
    return box;
  }

  // The window in the page's address (?window=24h), 1h when absent or unknown.
  function windowFromUrl() {
    var w = new URLSearchParams(location.search).get("window");
    return WINDOWS.some(function (x) { return x[0] === w; }) ? w : "1h";
  }
  function rememberWindow(w) {
    var params = new URLSearchParams(location.search);
    params.set("window", w);
    history.replaceState(null, "", location.pathname + "?" + params.toString());
  }

  function pointValue(p, key) {
    if (!p || typeof p !== "object") return null;
    return finite(p[key]);
  }
  function quantile(p, key, q) {
    var o = p && typeof p === "object" ? p[key] : null;
    return o && typeof o === "object" ? finite(o[q]) : null;
  }

  // The history charts of one page: throughput, failures and retries, runtime and
  // queue wait percentiles, from GET /api/v1/history (name/worker narrow it).
  // opts {name, worker, window, selector (default true), onWindow(w), onPush(push)}.
  // Returns {load(window), show(body), merge(push), window}.
  function historyPanel(M, el, opts) {
    opts = opts || {};
    var state = {window: opts.window || windowFromUrl(), body: null, charts: {}};
    var note = M.h("p", {class: "muted chart-note"});
    var grid = M.h("div", {class: "chart-grid"});
    var defs = [
      {key: "throughput", title: "Throughput", y: "tasks", count: true, series: [
        {label: "received", color: "accent", get: function (p) { return pointValue(p, "received"); }},
        {label: "succeeded", color: "ok", get: function (p) { return pointValue(p, "succeeded"); }},
        {label: "failed", color: "bad", get: function (p) { return pointValue(p, "failed"); }}]},
      {key: "failures", title: "Failures and retries", y: "tasks", count: true, series: [
        {label: "failed", color: "bad", bars: true,
         get: function (p) { return pointValue(p, "failed"); }},
        {label: "retried", color: "warn", get: function (p) { return pointValue(p, "retried"); }},
        {label: "revoked", color: "pending",
         get: function (p) { return pointValue(p, "revoked"); }}]},
      {key: "runtime", title: "Runtime", y: "seconds", series: ["p50", "p95", "p99"].map(
        function (q, i) { return {label: q, color: ["ok", "warn", "bad"][i],
          get: function (p) { return quantile(p, "runtime", q); }}; })},
      {key: "queue_wait", title: "Queue wait (received − sent)", y: "seconds",
        series: ["p50", "p95", "p99"].map(function (q, i) { return {label: q,
          color: ["accent", "info", "bad"][i],
          get: function (p) { return quantile(p, "queue_wait", q); }}; })}
    ];
    // A worker's counters carry no queue wait (only a name's and the whole's do).
    if (opts.worker) defs = defs.filter(function (d) { return d.key !== "queue_wait"; });
    var titles = {};
    defs.forEach(function (def) {
      var holder = M.h("div", {class: "chart", "data-chart": def.key});
      titles[def.key] = M.h("h3", {text: def.title});
      def.holder = holder;
      grid.appendChild(M.h("div", {class: "chart-cell"}, titles[def.key], holder));
    });
    var selector = opts.selector === false ? null : windowSelector(state.window, function (w) {
      rememberWindow(w);
      if (opts.onWindow) opts.onWindow(w);
      load(w);
    });
    M.append(el, M.h("div", {class: "history-panel"},
      M.h("div", {class: "history-head"}, selector, note), grid));

    function per(step) {
      return step === 60 ? "per minute" : step === 3600 ? "per hour" :
        finite(step) ? "per " + M.fmtDuration(step) : "";
    }
    function show(body) {
      state.body = body;
      var points = body && Array.isArray(body.points) ? body.points : [];
      var ts = points.map(function (p) { return pointValue(p, "t"); });
      var unit = per(body && body.step);
      defs.forEach(function (def) {
        titles[def.key].textContent = def.title + (def.count && unit ? " (" + unit + ")" : "");
        var data = {t: ts, series: def.series.map(function (s) {
          return {label: s.label, color: s.color, bars: s.bars,
                  values: points.map(s.get)}; })};
        var format = def.count ? function (v) { return M.fmtNum(Math.round(v * 100) / 100); } :
          function (v) { return M.fmtDuration(v); };
        var chartOpts = {yLabel: def.count ? "tasks " + unit : def.y, format: format,
                         whole: !!def.count,
                         axisFormat: def.count ? format : shortDuration};
        if (state.charts[def.key]) state.charts[def.key].update(data, chartOpts);
        else state.charts[def.key] = timeseries(def.holder, data, chartOpts);
      });
      var totals = body && body.totals || {};
      note.textContent = points.length ? M.fmtNum(points.length) + " points, " + unit +
        ": " + M.fmtNum(totals.succeeded || 0) + " succeeded, " +
        M.fmtNum(totals.failed || 0) + " failed, " + M.fmtNum(totals.retried || 0) +
        " retried" : "No history for this window.";
    }
    // Live: the page's room for this window (monitor.web.history_room), pushed every
    // few seconds while subscribed; the previous window's room is left.
    var room = null;
    function follow() {
      if (!M.subscribe || !M.on) return;
      var next = {room: "history", window: state.window};
      if (opts.name) next.name = opts.name;
      if (opts.worker) next.worker = opts.worker;
      if (room && JSON.stringify(room) === JSON.stringify(next)) return;
      if (room && M.unsubscribe) M.unsubscribe(room);
      room = next;
      M.on("history", function (push) {
        if (!push || (push.name || null) !== (opts.name || null) ||
            (push.worker || null) !== (opts.worker || null)) return;
        merge(push);
      });
      M.subscribe(room);
    }
    function load(w) {
      state.window = w || state.window;
      el.setAttribute("data-window", state.window);
      el.setAttribute("data-loaded", "false");
      var asked = state.window;
      return M.api("/history", {window: asked, name: opts.name, worker: opts.worker})
        .then(function (body) {
          if (asked !== state.window) return;  // another window was chosen meanwhile
          show(body);
          el.setAttribute("data-loaded", "true");
          follow();
        }, function (e) {
          note.textContent = "";
          M.append(note, M.errorBox(e));
          el.setAttribute("data-loaded", "error");
        });
    }
    // A live push: the window's latest points (and its totals). Points are keyed by
    // their start: a known one is replaced, a new one appended, and the window's
    // oldest fall off (those before the push's "from").
    function merge(push) {
      if (!push || push.window !== state.window || !state.body) return;
      var from = finite(push.from);
      var byT = {};
      var points = (Array.isArray(state.body.points) ? state.body.points : []).slice();
      points.forEach(function (p, i) { byT[pointValue(p, "t")] = i; });
      (Array.isArray(push.points) ? push.points : []).forEach(function (p) {
        var t = pointValue(p, "t");
        if (t === null) return;
        if (byT[t] !== undefined) points[byT[t]] = p;
        else points.push(p);
      });
      points.sort(function (a, b) { return pointValue(a, "t") - pointValue(b, "t"); });
      if (from !== null) points = points.filter(function (p) { return pointValue(p, "t") >= from; });
      var body = {};
      Object.keys(state.body).forEach(function (k) { body[k] = state.body[k]; });
      body.points = points;
      if (push.totals) body.totals = push.totals;
      if (from !== null) body.from = from;
      show(body);
      state.pushes = (state.pushes || 0) + 1;
      el.setAttribute("data-pushes", String(state.pushes));
      if (opts.onPush) opts.onPush(push);
    }
    state.load = load;
    state.show = show;
    state.merge = merge;
    return state;
  }

  // The history of a page drawn by monitor.js (overview, worker): a block it
  // creates once and puts back on every render (the same nodes, so the charts stay).
  // opts as historyPanel's.
  function historySection(M, title, opts) {
    var el = M.h("div", {class: "history-section"}, M.h("h2", {class: "history-title",
      text: title}));
    var panel = historyPanel(M, el, opts);
    panel.el = el;
    panel.load();
    return panel;
  }

  window.MonitorCharts = {timeseries: timeseries, histogram: histogram,
    windowSelector: windowSelector, historyPanel: historyPanel, historySection: historySection,
    windowFromUrl: windowFromUrl,
    WINDOWS: WINDOWS};
})();
