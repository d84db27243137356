// The portfolio page: accounts and ARR per bucket, red share against its
// target, score distribution, movers, and the account list (filtered, sorted
// and paged by the server). Refreshes every 5 seconds; the filters live in
// the page's address, so a filtered view can be bookmarked or shared.
"use strict";

(() => {
  const REFRESH_MS = 5000;
  const FILTERS = ["segment", "stage", "csm_owner"];
  const form = document.getElementById("filters");
  const notices = document.getElementById("notices");
  const live = document.getElementById("live");
  let page = 1;

  function params() {
    const data = new FormData(form);
    const out = new URLSearchParams();
    const buckets = data.getAll("bucket");
    if (buckets.length) out.set("bucket", buckets.join(","));
    for (const name of [...FILTERS, "q", "sort", "order", "page_size"]) {
      const value = String(data.get(name) || "").trim();
      if (value) out.set(name, value);
    }
    if (page > 1) out.set("page", String(page));
    return out;
  }

  // The address holds the filters: restore them on load.
  function restore() {
    const query = new URLSearchParams(location.search);
    const buckets = (query.get("bucket") || "").split(",");
    for (const box of form.querySelectorAll("input[name=bucket]")) box.checked = buckets.includes(box.value);
    for (const name of [...FILTERS, "q", "sort", "order", "page_size"]) {
      const field = form.elements.namedItem(name);
      const value = query.get(name);
      if (!field || value === null) continue;
      if (field.tagName === "SELECT" && ![...field.options].some((o) => o.value === value)) {
        field.append(V.el("option", { value, text: value }));
      }
      field.value = value;
    }
    page = Math.max(1, parseInt(query.get("page") || "1", 10) || 1);
  }

  function fillFacet(name, counts) {
    const select = form.elements.namedItem(name);
    const current = select.value;
    const options = [V.el("option", { value: "", text: "all" })];
    for (const [value, count] of Object.entries(counts || {})) {
      options.push(V.el("option", { value, text: `${value} (${count})` }));
    }
    if (current && !(current in (counts || {}))) options.push(V.el("option", { value: current, text: current }));
    select.replaceChildren(...options);
    select.value = current;
  }

  function showTiles(summary) {
    for (const bucket of V.BUCKETS) {
      const slot = summary.buckets[bucket] || { accounts: 0, arr: 0, share: 0 };
      document.getElementById(`bucket-${bucket}-count`).textContent = String(slot.accounts);
      document.getElementById(`bucket-${bucket}-arr`).textContent =
        `ARR ${V.fmtMoney(slot.arr)} · ${V.fmtShare(slot.share)} of accounts`;
    }
    const tile = document.getElementById("red-share-tile");
    document.getElementById("red-share").textContent = V.fmtShare(summary.red_share);
    document.getElementById("red-share-target").textContent =
      `target ${V.fmtShare(summary.red_share_target)}: ` +
      (summary.red_share_within_target ? "within target" : "above target");
    tile.classList.toggle("tile-alarm", !summary.red_share_within_target);
  }

  function showMovers(id, movers, field) {
    const list = document.getElementById(id);
    const items = (movers || []).map((m) =>
      V.el("li", {},
        V.el("a", { href: V.accountHref(m.account_id), text: m.account_id }), " ",
        V.badge(m.bucket), " ",
        V.el("span", { class: m[field] < 0 ? "down" : "up", text: V.fmtDelta(m[field]) }),
        V.el("span", { class: "muted", text: ` → ${V.fmtNum(m.score)}` })));
    if (!items.length) items.push(V.el("li", { class: "muted", text: "none" }));
    list.replaceChildren(...items);
  }

  function showTable(body) {
    const rows = body.items.map((a) =>
      V.el("tr", { "data-account": a.account_id },
        V.el("td", {}, V.el("a", { href: V.accountHref(a.account_id), class: "account-link", text: a.account_id })),
        V.el("td", {}, V.badge(a.bucket)),
        V.el("td", { class: "num", text: V.fmtNum(a.score) }),
        V.el("td", { text: a.grade || "–" }),
        V.el("td", { class: "num " + (a.delta_7d < 0 ? "down" : "up"), text: V.fmtDelta(a.delta_7d) }),
        V.el("td", { class: "num " + (a.delta_30d < 0 ? "down" : "up"), text: V.fmtDelta(a.delta_30d) }),
        V.el("td", { class: "num", text: V.fmtMoney(a.arr) }),
        V.el("td", { text: a.segment || "–" }),
        V.el("td", { text: a.stage || "–" }),
        V.el("td", { text: a.csm_owner || "–" })));
    if (!rows.length) rows.push(V.el("tr", {}, V.el("td", { colspan: 10, class: "muted", text: "No account matches these filters." })));
    document.querySelector("#accounts tbody").replaceChildren(...rows);
    document.getElementById("page-info").textContent =
      `page ${body.page} of ${body.pages} · ${body.total} accounts`;
    document.getElementById("prev").disabled = body.page <= 1;
    document.getElementById("next").disabled = body.page >= body.pages;
    const all = Object.values(body.facets.bucket || {}).reduce((a, b) => a + b, 0);
    document.getElementById("scope").textContent =
      body.total === all ? `(all ${all})` : `(${body.total} of ${all} match the filters)`;
  }

  async function refresh() {
    const query = params();
    history.replaceState(null, "", "?" + query.toString());
    let body;
    try {
      body = await V.api("../accounts?" + query.toString());
    } catch (exc) {
      notices.replaceChildren();
      V.notice(notices, "error", V.describeError(exc));
      live.textContent = "not updated: " + new Date().toISOString().slice(11, 19) + " UTC";
      live.classList.add("stale");
      return;
    }
    notices.replaceChildren();
    if (!body.complete) {
      V.notice(notices, "warning",
        `Incomplete: ${body.unreachable.length} of ${body.workers} workers did not answer ` +
        `(${body.unreachable.join(", ")}); their accounts are missing from the counts and the list.`);
    }
    if (body.page > body.pages && body.total > 0) {
      page = body.pages;
      return refresh();
    }
    showTiles(body.summary);
    document.getElementById("distribution").replaceChildren(Charts.distribution(body.summary.distribution));
    showMovers("movers-7d-down", body.summary.movers.down, "delta_7d");
    showMovers("movers-7d-up", body.summary.movers.up, "delta_7d");
    showMovers("movers-30d-down", (body.summary.movers_30d || {}).down, "delta_30d");
    showMovers("movers-30d-up", (body.summary.movers_30d || {}).up, "delta_30d");
    for (const name of FILTERS) fillFacet(name, body.facets[name]);
    showTable(body);
    live.textContent = `live · updated ${new Date(V.toMs(body.as_of) || Date.now()).toISOString().slice(11, 19)} UTC · ` +
      `${body.workers} worker${body.workers === 1 ? "" : "s"}`;
    live.classList.remove("stale");
  }

  document.addEventListener("DOMContentLoaded", () => {
    restore();
    const timer = V.every(REFRESH_MS, refresh);
    V.installTokenBox(timer.now);
    form.addEventListener("change", () => { page = 1; timer.now(); });
    form.addEventListener("submit", (event) => { event.preventDefault(); page = 1; timer.now(); });
    let typing = null;
    form.elements.namedItem("q").addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => { page = 1; timer.now(); }, 300);
    });
    document.getElementById("prev").addEventListener("click", () => { page = Math.max(1, page - 1); timer.now(); });
    document.getElementById("next").addEventListener("click", () => { page += 1; timer.now(); });
  });
})();
