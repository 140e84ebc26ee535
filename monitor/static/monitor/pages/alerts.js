/* The Alerts page: the rules (the rules file's read-only, the operators' editable),
 * what fires now, deliveries still pending and the log of sent alerts.
 *
 * Data: GET /api/v1/alerts/rules and /api/v1/alerts. Operators create, edit, test
 * and delete the UI's rules through confirmation dialogs (POST/DELETE
 * /api/v1/alerts/rules...); the API validates every field and says which one is
 * wrong. The "alerts" Socket.IO room keeps the sent log, the pending deliveries and
 * what fires now live. Everything reaches the DOM through M.h (textContent).
 */
(window.MonitorPages = window.MonitorPages || {}).alerts = function (M) {
  "use strict";
  var h = M.h, append = M.append, clear = M.clear;
  var KIND_LABELS = {task_failed: "task failed", failure_rate: "failure rate",
                     worker_offline: "worker offline", queue: "queue", beat_missed: "beat missed"};
  var FIELD_LABELS = {threshold_percent: "threshold (%)", window_seconds: "window (s)",
    min_count: "minimum finished tasks", per_name: "each task name apart",
    seconds: "offline for (s)", max_depth: "depth above", max_age: "oldest message older than (s)",
    send_resolved: "send a resolved message"};
  var BOOL_FIELDS = {per_name: 1, send_resolved: 1, enabled: 1};
  var rulesBody = h("tbody"), sentBody = h("tbody"), activeBox = h("div"), pendingBox = h("div");
  var problemsBox = h("div", {class: "alert-problems"});
  var status = h("span", {class: "muted alerts-status"});
  var kinds = {};
  var canEdit = false;
  var older = null;
  var pagedBack = false;  // the reader asked for older alerts: live pushes leave the log alone
  var moreButton = M.button("Older", function () { pagedBack = true; loadSent(older); }, "more",
                            {hidden: "hidden"});

  function text(v) { return v === null || v === undefined ? "" : String(v); }
  // Whole seconds, minutes or hours: a rule's durations are round numbers.
  function secs(v) {
    var n = Number(v);
    if (v === null || v === undefined || !isFinite(n)) return text(v);
    if (n < 120 || n % 60) return n + " s";
    if (n < 7200 || n % 3600) return n / 60 + " min";
    return n / 3600 + " h";
  }
  function isObj(v) { return v !== null && typeof v === "object" && !Array.isArray(v); }

  // DELETE with the page's CSRF token (M.post covers POST only).
  function del(path) {
    return fetch(M.CFG.api + path, {method: "DELETE", credentials: "same-origin",
      headers: {Accept: "application/json", "X-CSRFToken": M.CFG.csrf_token || ""}})
      .then(function (r) {
        return r.text().then(function (t) {
          var body = null;
          try { body = t ? JSON.parse(t) : null; } catch (e) { body = null; }
          if (!r.ok) {
            var err = new Error(body && body.error ? String(body.error) : "HTTP " + r.status);
            err.status = r.status;
            throw err;
          }
          return body;
        });
      });
  }

  function condition(rule) {
    switch (rule.kind) {
      case "task_failed": return "fails after its retries";
      case "failure_rate":
        return "> " + text(rule.threshold_percent) + " % failed over " +
          secs(rule.window_seconds) + " (at least " + text(rule.min_count) + ")" +
          (rule.per_name ? ", per name" : "");
      case "worker_offline": return "offline for " + secs(rule.seconds);
      case "queue":
        return [rule.max_depth !== null && rule.max_depth !== undefined ?
                  "depth > " + text(rule.max_depth) : null,
                rule.max_age !== null && rule.max_age !== undefined ?
                  "oldest > " + secs(rule.max_age) : null]
          .filter(Boolean).join(" or ");
      case "beat_missed": return "did not run when due";
    }
    return "";
  }

  function ruleRow(rule) {
    var actions = null;
    if (canEdit && rule.editable) {
      actions = h("td", {class: "row-actions"},
        M.button("Edit", function () { editRule(rule); }, "btn-small", {"data-action": "edit"}),
        M.button("Test", function () { testRule(rule); }, "btn-small", {"data-action": "test"}),
        M.button("Delete", function () { deleteRule(rule); }, "btn-small btn-danger",
                 {"data-action": "delete"}));
    } else if (canEdit) {
      actions = h("td", {class: "row-actions"},
        M.button("Test", function () { testRule(rule); }, "btn-small", {"data-action": "test"}));
    } else {
      actions = h("td");
    }
    return h("tr", {"data-rule": text(rule.name), class: rule.enabled === false ? "rule-off" : null},
      h("td", {class: "mono", text: text(rule.name)}),
      h("td", null, h("span", {class: "badge kind-badge", text: KIND_LABELS[rule.kind] || text(rule.kind)})),
      h("td", {class: "mono clip", text: text(rule.pattern), title: text(rule.pattern)}),
      h("td", {text: condition(rule)}),
      h("td", {class: "mono clip", title: text(rule.webhook)}, text(rule.webhook),
        h("span", {class: "muted small", text: " · " + text(rule.format)})),
      h("td", null, h("span", {class: "badge source-" + (rule.source === "ui" ? "ui" : "file"),
        text: rule.source === "ui" ? "UI" : "file"}),
        rule.enabled === false ? h("span", {class: "muted small", text: " off"}) : null),
      actions);
  }

  function loadRules() {
    return M.api("/alerts/rules").then(function (b) {
      kinds = isObj(b && b.kinds) ? b.kinds : {};
      canEdit = b && b.can_edit === true;
      newButton.hidden = !canEdit;
      clear(rulesBody);
      var rules = Array.isArray(b && b.rules) ? b.rules : [];
      rules.forEach(function (r) { if (isObj(r)) rulesBody.appendChild(M.safeRow(ruleRow, 7)(r)); });
      if (!rules.length) {
        rulesBody.appendChild(h("tr", null, h("td", {colspan: 7, class: "muted",
          text: "No rule yet. Rules come from MONITOR_ALERT_RULES (a TOML or JSON file)" +
            (canEdit ? ", or from “New rule” above." : " and from operators in this page.")})));
      }
      fileLine.textContent = b && b.file ? "Rules file: " + String(b.file) : "No rules file " +
        "(MONITOR_ALERT_RULES is not set).";
      clear(problemsBox);
      var problems = isObj(b && b.problems) ? b.problems : {};
      Object.keys(problems).forEach(function (name) {
        problemsBox.appendChild(h("p", {class: "error"}, h("code", {text: name}), ": " +
          text(problems[name])));
      });
    }).catch(function (e) { clear(rulesBody); rulesBody.appendChild(h("tr", null,
      h("td", {colspan: 7}, M.errorBox(e)))); });
  }

  function deliveryBadge(a) {
    var d = text(a.delivery) || "pending";
    return h("span", {class: "badge delivery-" + d.replace(/[^a-z]/g, ""), text: d});
  }
  function statusBadge(a) {
    var s = text(a.status);
    return h("span", {class: "badge alert-" + s.replace(/[^a-z]/g, ""), text: s});
  }
  function lastError(a) {
    var errors = Array.isArray(a.errors) ? a.errors : [];
    return a.error ? text(a.error) : errors.length ? text(errors[errors.length - 1]) : "";
  }
  function sentRow(a) {
    return h("tr", {"data-alert": text(a.id)},
      h("td", null, M.fmtTime(a.at)),
      h("td", null, statusBadge(a)),
      h("td", {class: "mono", text: text(a.rule)}),
      h("td", {class: "mono clip", text: text(a.subject), title: text(a.subject)}),
      h("td", {class: "summary"}, a.details && a.details.task_id ?
        M.taskLink(String(a.details.task_id), text(a.summary)) : text(a.summary)),
      h("td", null, deliveryBadge(a)),
      h("td", {class: "num", text: text(a.attempts)}),
      h("td", {class: "clip muted", text: lastError(a) || (a.http_status ? "HTTP " +
        text(a.http_status) : ""), title: lastError(a)}));
  }
  var SENT_COLUMNS = ["Time", "Status", "Rule", "Subject", "Summary", "Delivery", "Attempts",
                      "Last answer"];

  function loadSent(before) {
    moreButton.disabled = true;
    return M.api("/alerts", {limit: 50, before: before}).then(function (b) {
      if (!before) {
        clear(sentBody);
        drawActive(Array.isArray(b && b.active) ? b.active : []);
        drawPending(Array.isArray(b && b.pending) ? b.pending : []);
        var st = isObj(b && b.status) ? b.status : {};
        clear(status);
        append(status, st.last_run ? ["rules evaluated ", M.agoEl(st.last_run)] :
          "the evaluator has not run yet (it runs in one serve process)");
      }
      var sent = Array.isArray(b && b.sent) ? b.sent : [];
      sent.forEach(function (a) { if (isObj(a)) sentBody.appendChild(M.safeRow(sentRow, 8)(a)); });
      if (!before && !sent.length) {
        sentBody.appendChild(h("tr", null, h("td", {colspan: 8, class: "muted",
          text: "No alert sent yet."})));
      }
      older = b && b.next_before ? String(b.next_before) : null;
      moreButton.hidden = !older;
    }).catch(function (e) { clear(sentBody); sentBody.appendChild(h("tr", null,
      h("td", {colspan: 8}, M.errorBox(e)))); })
      .then(function () { moreButton.disabled = false; });
  }

  function drawActive(list) {
    clear(activeBox);
    if (!list.length) { activeBox.appendChild(h("p", {class: "muted", text: "Nothing fires now."})); return; }
    activeBox.appendChild(M.table(["Rule", "Subject", "Since", "Summary"], list.map(function (a) {
      return h("tr", {"data-active": text(a.rule) + "/" + text(a.subject)},
        h("td", {class: "mono", text: text(a.rule)}),
        h("td", {class: "mono", text: text(a.subject)}),
        h("td", null, M.agoEl(a.since)),
        h("td", {text: text(a.summary)}));
    })));
  }
  function drawPending(list) {
    clear(pendingBox);
    if (!list.length) { pendingBox.appendChild(h("p", {class: "muted", text: "No delivery waiting."})); return; }
    pendingBox.appendChild(M.table(["Rule", "Subject", "Attempts", "Next attempt", "Last answer"],
      list.map(function (a) {
        return h("tr", {"data-pending": text(a.id)},
          h("td", {class: "mono", text: text(a.rule)}),
          h("td", {class: "mono", text: text(a.subject)}),
          h("td", {class: "num", text: text(a.attempts)}),
          h("td", null, M.fmtTime(a.next_attempt)),
          h("td", {class: "muted", text: lastError(a)}));
      })));
  }

  // -- the rule editor -----------------------------------------------------------------------
  function input(name, value, attrs) {
    return h("input", Object.assign({name: name, value: value === null || value === undefined ?
      "" : String(value), autocomplete: "off"}, attrs || {}));
  }
  function checkbox(name, checked) {
    var el = h("input", {type: "checkbox", name: name});
    el.checked = !!checked;
    return el;
  }
  function select(name, options, value) {
    var el = h("select", {name: name}, options.map(function (o) {
      return h("option", {value: o, text: KIND_LABELS[o] || o});
    }));
    el.value = value;
    return el;
  }

  function editRule(rule) {
    var creating = !rule;
    rule = rule || {kind: "task_failed", format: "json", pattern: "*", enabled: true};
    var nameInput = input("name", rule.name, {placeholder: "payments-failing", maxlength: "64"});
    var kindSelect = select("kind", Object.keys(KIND_LABELS), rule.kind);
    var patternInput = input("pattern", rule.pattern, {placeholder: "*", maxlength: "200"});
    var webhookInput = input("webhook", rule.webhook, {placeholder: "https://hooks.slack.com/services/…",
                                                       maxlength: "2048", class: "wide"});
    var formatSelect = select("format", ["json", "slack"], rule.format || "json");
    var dedupInput = input("dedup_seconds", rule.dedup_seconds, {placeholder: "default",
                                                                 inputmode: "decimal"});
    var descInput = input("description", rule.description, {maxlength: "1000", class: "wide"});
    var enabledBox = checkbox("enabled", rule.enabled !== false);
    var kindFields = h("div", {class: "kind-fields"});
    var extra = {};
    function drawKind() {
      clear(kindFields);
      extra = {};
      var spec = isObj(kinds[kindSelect.value]) ? kinds[kindSelect.value] : {fields: []};
      (spec.fields || []).forEach(function (f) {
        var defaults = isObj(spec.defaults) ? spec.defaults : {};
        var value = rule.kind === kindSelect.value && rule[f] !== undefined ? rule[f] : defaults[f];
        var el = BOOL_FIELDS[f] ? checkbox(f, value) :
          input(f, value, {inputmode: "decimal", required: (spec.required || []).indexOf(f) >= 0 ?
            "required" : null});
        extra[f] = el;
        append(kindFields, M.field(FIELD_LABELS[f] || f, el));
      });
    }
    kindSelect.addEventListener("change", drawKind);
    drawKind();
    function body() {
      var out = {kind: kindSelect.value, pattern: patternInput.value.trim() || "*",
        webhook: webhookInput.value.trim(), format: formatSelect.value,
        description: descInput.value, enabled: enabledBox.checked,
        dedup_seconds: M.numberOr(dedupInput.value)};
      if (creating) out.name = nameInput.value.trim();
      Object.keys(extra).forEach(function (f) {
        out[f] = BOOL_FIELDS[f] ? extra[f].checked : M.numberOr(extra[f].value);
      });
      return out;
    }
    M.confirmAction({
      title: creating ? "New alert rule" : "Edit alert rule " + rule.name,
      confirm: creating ? "Create" : "Save",
      body: [h("div", {class: "rule-form"},
        creating ? M.field("name", nameInput, "letters, digits, _ . : -") : null,
        M.field("kind", kindSelect),
        M.field("pattern", patternInput, "a glob over task names, hostnames, queues or periodic tasks"),
        kindFields,
        M.field("webhook", webhookInput, "http:// or https://"),
        M.field("format", formatSelect, "json: generic; slack: {text, blocks}"),
        M.field("dedup (s)", dedupInput, "one alert per rule and subject in this window"),
        M.field("description", descInput),
        M.field("enabled", enabledBox))],
      run: function () {
        return M.post(creating ? "/alerts/rules" : "/alerts/rules/" + M.enc(rule.name), body());
      },
      show: function (r) {
        return h("p", {class: "rule-saved", text: "Rule " + text(r && r.rule && r.rule.name) +
          (creating ? " created." : " saved.")});
      },
      done: function () { loadRules(); }
    });
  }

  function testRule(rule) {
    M.confirmAction({
      title: "Test alert rule " + rule.name,
      confirm: "Send a test message",
      body: [h("p", null, "Post one test message to ", h("code", {text: text(rule.webhook)}),
        " now (not retried, not logged).")],
      run: function () { return M.post("/alerts/rules/" + M.enc(rule.name) + "/test", {}); },
      show: function (r) {
        return r && r.ok ? h("p", {class: "test-ok", text: "Delivered (HTTP " + text(r.http_status) + ")."}) :
          h("p", {class: "error", text: "Not delivered: " + text(r && r.error)});
      }
    });
  }

  function deleteRule(rule) {
    M.confirmAction({
      title: "Delete alert rule " + rule.name,
      danger: true,
      confirm: "Delete",
      body: [h("p", null, "Delete the rule ", h("code", {text: text(rule.name)}),
        ". What it has firing is forgotten; alerts already sent stay in the log.")],
      run: function () { return del("/alerts/rules/" + M.enc(rule.name)); },
      show: function () { return h("p", {text: "Deleted."}); },
      done: function () { loadRules(); },
      closeOnDone: true
    });
  }

  var newButton = M.button("New rule", function () { editRule(null); }, "btn-primary new-rule",
                           {hidden: "hidden"});
  var fileLine = h("p", {class: "muted small"});
  clear(M.main);
  append(M.main, [
    h("div", {class: "title-row"}, h("h1", {text: "Alerts"}), status,
      M.button("Refresh", function () { pagedBack = false; loadRules(); loadSent(null); },
               "btn-small refresh")),
    M.refusalLine(),
    h("section", {class: "card flush alert-rules"},
      h("div", {class: "card-head"}, h("h2", {text: "Rules"}), newButton),
      fileLine, problemsBox,
      h("table", {class: "grid rules"}, h("thead", null, h("tr", null,
        ["Name", "Kind", "Pattern", "Condition", "Webhook", "Source", ""].map(function (c) {
          return h("th", {text: c}); }))), rulesBody)),
    M.section("Firing now", activeBox),
    M.section("Pending deliveries", pendingBox),
    h("section", {class: "card flush sent-alerts"}, h("h2", {text: "Sent alerts"}),
      h("table", {class: "grid sent"}, h("thead", null, h("tr", null,
        SENT_COLUMNS.map(function (c) { return h("th", {text: c}); }))), sentBody)),
    moreButton]);
  M.handlers.refresh = function () { loadRules(); loadSent(null); };
  loadRules();
  loadSent(null);
  // Live: the alerts room pushes the newest page every few seconds; redrawn only
  // when it changed, and the sent log only while the reader is on its first page.
  var lastPush = "";
  M.subscribe({room: "alerts"});
  M.on("alerts", function (b) {
    var key;
    try { key = JSON.stringify(b); } catch (e) { key = String(Math.random()); }
    if (key === lastPush) return;
    lastPush = key;
    M.schedule(function () { drawLive(b); });
  });
  function drawLive(b) {
    if (!isObj(b)) return;
    drawActive(Array.isArray(b.active) ? b.active : []);
    drawPending(Array.isArray(b.pending) ? b.pending : []);
    var st = isObj(b.status) ? b.status : {};
    if (st.last_run) { clear(status); append(status, ["rules evaluated ", M.agoEl(st.last_run)]); }
    if (pagedBack) return;
    clear(sentBody);
    var sent = Array.isArray(b.sent) ? b.sent : [];
    sent.forEach(function (a) { if (isObj(a)) sentBody.appendChild(M.safeRow(sentRow, 8)(a)); });
    if (!sent.length) {
      sentBody.appendChild(h("tr", null, h("td", {colspan: 8, class: "muted",
        text: "No alert sent yet."})));
    }
    older = sent.length >= 50 && sent[sent.length - 1].log_id ? String(sent[sent.length - 1].log_id) : null;
    moreButton.hidden = !older;
  }
};
