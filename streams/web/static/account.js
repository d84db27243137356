// The account page: score, bucket and grade with the gates and their reasons,
// the drivers in the scorecard's words, the score history from the SQL
// history with bucket bands and markers, events by type, the CSM pulse, and
// the form that sets a pulse and shows the rescored result once it is in.
"use strict";

(() => {
  const REFRESH_MS = 10000;
  const PULSE_WAIT_MS = 60000;
  const accountId = new URLSearchParams(location.search).get("id") || "";
  const base = "../accounts/" + encodeURIComponent(accountId);
  const notices = document.getElementById("notices");
  const live = document.getElementById("live");
  let current = null; // the newest overview shown

  function fact(list, name, ...value) {
    list.append(V.el("dt", { text: name }), V.el("dd", {}, ...value));
  }

  function showHeadline(ov) {
    const health = ov.health;
    const snapshot = (ov.state && ov.state.snapshot) || {};
    document.getElementById("score").textContent = V.fmtNum(health.score);
    V.replace(document.getElementById("bucket"), V.badge(health.bucket));
    document.getElementById("grade").textContent = "grade " + health.grade;
    const facts = document.getElementById("facts");
    facts.replaceChildren();
    fact(facts, "7-day change", V.fmtDelta(health.trend && health.trend.delta_7d));
    fact(facts, "30-day change", V.fmtDelta(health.trend && health.trend.delta_30d));
    fact(facts, "stage · profile", `${health.stage} · ${ov.profile || "default"}`);
    fact(facts, "segment", snapshot.segment || "–");
    fact(facts, "CSM owner", snapshot.csm_owner || "–");
    fact(facts, "ARR", V.fmtMoney(snapshot.arr));
    fact(facts, "seats", snapshot.seats === undefined ? "–" : String(snapshot.seats));
    fact(facts, "renewal", V.fmtDate(snapshot.renewal_at));
    fact(facts, "scorecard", `${health.scorecard.name} v${health.scorecard.version}`);
    fact(facts, "scored at", V.fmtTime(health.as_of));
    if (health.low_confidence) {
      fact(facts, "confidence", V.el("span", { class: "warn", text: "low: too little data for a confident score" }));
    }
  }

  function showGates(gates) {
    const list = document.getElementById("gates");
    const items = (gates || []).map((g) => {
      const effect = g.effect === "lift"
        ? `lifts the bucket to at least ${g.bucket}`
        : `caps the bucket at ${g.bucket}`;
      return V.el("li", { class: "gate" + (g.decided ? " gate-decided" : ""), "data-gate": g.name },
        V.el("span", { class: "gate-name", text: g.name }), " ",
        V.el("span", { class: "gate-reason", text: g.reason || "(no reason given in the scorecard)" }),
        V.el("span", { class: "gate-effect muted", text: ` · ${effect}` }),
        g.decided ? V.el("span", { class: "gate-decided-tag", text: "decided the bucket" }) : null);
    });
    if (!items.length) items.push(V.el("li", { class: "muted no-gates", text: "No gate fired: the score alone sets the bucket." }));
    list.replaceChildren(...items);
  }

  function showPulse(pulse, asOf) {
    const box = document.getElementById("pulse");
    if (!pulse) {
      V.replace(box, V.el("p", { class: "muted", text: "No pulse set." }));
      return;
    }
    const expires = V.toMs(pulse.expires_at);
    const expired = pulse.expired !== undefined ? pulse.expired : expires !== null && expires <= (V.toMs(asOf) || Date.now());
    V.replace(box,
      V.el("p", {}, V.badge(pulse.rating), " ", V.el("span", { class: "pulse-reason", text: pulse.reason })),
      V.el("p", { class: "muted small" },
        pulse.author ? V.el("span", { class: "pulse-author", text: "by " + pulse.author }) : "author not recorded",
        pulse.occurred_at !== undefined ? ` · set ${V.fmtTime(pulse.occurred_at)}` : "",
        ` · ${expired ? "expired" : "expires"} ${V.fmtDate(pulse.expires_at)}`));
  }

  function showDrivers(ov) {
    const health = ov.health;
    const labels = ov.labels || {};
    const items = (health.components || [])
      .filter((c) => c.weight > 0)
      .map((c) => ({
        metric: c.metric,
        label: c.label || labels[c.metric] || c.metric,
        value: c.value,
        score: c.score,
        weight: c.weight,
        // score = 50 + the sum of these: what each metric adds above or below the middle.
        pull: c.contribution - 50 * c.weight,
      }))
      .sort((a, b) => b.pull - a.pull);
    const box = document.getElementById("drivers");
    if (items.length) box.replaceChildren(Charts.drivers(items));
    else V.replace(box, V.el("p", { class: "muted", text: "No metric has data yet." }));
    const missing = (health.missing || []).map((m) => (labels[m] || m).replace(/\.$/, ""));
    document.getElementById("missing").textContent = missing.length
      ? "No data (their weight went to the other metrics): " + missing.join(" · ")
      : "";
  }

  function showEvents(state) {
    const counts = Object.entries((state && state.counts) || {}).sort((a, b) => b[1] - a[1]);
    const rows = counts.map(([type, n]) =>
      V.el("tr", { "data-type": type }, V.el("td", { text: type }), V.el("td", { class: "num", text: String(n) })));
    if (!rows.length) rows.push(V.el("tr", {}, V.el("td", { colspan: 2, class: "muted", text: "none" })));
    document.getElementById("events").replaceChildren(...rows);
    document.getElementById("event-times").textContent = state
      ? `first event ${V.fmtTime(state.first_event_at)} · last event ${V.fmtTime(state.last_event_at)} · ` +
        `last product activity ${V.fmtTime(state.last_activity_at)}`
      : "";
  }

  function show(ov) {
    current = ov;
    document.title = `vitals · ${ov.account_id}`;
    showHeadline(ov);
    showGates(ov.gates);
    showPulse(ov.pulse, ov.health.as_of);
    showDrivers(ov);
    showEvents(ov.state);
    document.body.dataset.shown = "overview"; // for tests and scripts: an overview is on the page
  }

  async function loadHistory() {
    const box = document.getElementById("history");
    let body;
    try {
      body = await V.api(base + "/history?limit=2000");
    } catch (exc) {
      V.replace(box, V.el("p", { class: "chart-message notice notice-warning", text: V.describeError(exc) +
        (exc.reason === "history_unavailable" ? " The score history is not shown; the rest of the page is live." : "") }));
      return;
    }
    const scores = body.scores.map((s) => ({ t: V.toMs(s.as_of), score: s.score, bucket: s.bucket }));
    if (current) {
      // The live score, when newer than the last stored one, ends the line.
      const t = V.toMs(current.health.as_of);
      if (t !== null && (!scores.length || t > scores[scores.length - 1].t)) {
        scores.push({ t, score: current.health.score, bucket: current.health.bucket });
      }
    }
    const changes = body.bucket_changes.map((c) => ({ t: V.toMs(c.as_of), from: c.from_bucket, to: c.to_bucket, score: c.score }));
    const triggers = body.playbook_triggers.map((t) => ({ t: V.toMs(t.as_of), playbook: t.playbook, reason: t.reason }));
    if (!scores.length && !changes.length && !triggers.length) {
      V.replace(box, V.el("p", { class: "chart-message muted", text: "No stored history for this account yet." }));
      return;
    }
    box.replaceChildren(Charts.history(scores, changes, triggers, current && current.buckets));
    box.append(V.el("p", { class: "muted small history-counts",
      text: `${body.scores.length} stored scores · ${changes.length} bucket changes · ${triggers.length} playbook triggers` }));
  }

  async function loadOverview() {
    let ov;
    try {
      ov = await V.api(base + "/overview");
    } catch (exc) {
      notices.replaceChildren();
      const text = exc.status === 404 ? `No score for this account (yet): ${exc.message}.` : V.describeError(exc);
      V.notice(notices, "error", text);
      live.textContent = "not updated: " + new Date().toISOString().slice(11, 19) + " UTC";
      live.classList.add("stale");
      return;
    }
    notices.replaceChildren();
    show(ov);
    live.textContent = `live · updated ${new Date().toISOString().slice(11, 19)} UTC`;
    live.classList.remove("stale");
  }

  // The overview (live state, from the owning worker) and the history (SQL)
  // fail independently: either one still shows when the other does not answer.
  async function refresh() {
    await loadOverview();
    await loadHistory();
  }

  function pulseBody(form) {
    const data = new FormData(form);
    const body = { rating: String(data.get("rating") || ""), reason: String(data.get("reason") || "").trim() };
    const author = String(data.get("author") || "").trim();
    if (author) body.author = author;
    const expires = String(data.get("expires") || "");
    if (expires) body.expires_at = expires + "T23:59:59Z"; // the end of that day, UTC
    return body;
  }

  async function submitPulse(form) {
    const status = document.getElementById("pulse-status");
    const button = document.getElementById("pulse-submit");
    const body = pulseBody(form);
    const before = current;
    const pulsesBefore = before && before.state.counts ? before.state.counts.pulse || 0 : 0;
    status.className = "pulse-status";
    status.textContent = "Sending…";
    button.disabled = true;
    try {
      let accepted;
      try {
        accepted = await V.api(base + "/pulse", { method: "POST", body });
      } catch (exc) {
        status.className = "pulse-status error";
        status.textContent = exc.status === 401
          ? "Not sent: the pulse needs the API token (enter it above). " + exc.message
          : "Not sent: " + V.describeError(exc);
        return;
      }
      status.textContent = `Accepted (event ${accepted.event_id}); waiting for the rescore…`;
      const deadline = Date.now() + PULSE_WAIT_MS;
      while (Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        let ov;
        try {
          ov = await V.api(base + "/overview");
        } catch (exc) {
          continue; // e.g. a rebalance moment: keep waiting until the deadline
        }
        if (((ov.state.counts || {}).pulse || 0) > pulsesBefore) {
          show(ov);
          loadHistory();
          const was = before ? `${V.fmtNum(before.health.score)} (${before.health.bucket})` : "–";
          status.className = "pulse-status done";
          status.textContent = `Rescored with the pulse: score ${was} → ${V.fmtNum(ov.health.score)} (${ov.health.bucket}).`;
          form.elements.namedItem("reason").value = "";
          return;
        }
      }
      status.className = "pulse-status error";
      status.textContent = "The pulse was accepted but no rescore showed it within a minute; the page keeps refreshing.";
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("account-id").textContent = accountId || "(no account id in the address)";
    const form = document.getElementById("pulse-form");
    const expires = form.elements.namedItem("expires");
    expires.value = new Date(Date.now() + 30 * 86400e3).toISOString().slice(0, 10);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      submitPulse(form);
    });
    if (!accountId) return;
    const timer = V.every(REFRESH_MS, refresh);
    V.installTokenBox(timer.now);
  });
})();
