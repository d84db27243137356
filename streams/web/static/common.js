// Shared by the vitals pages: API calls with the token, formatting, DOM building.
//
// Every text that comes from data (account ids, reasons, scorecard texts,
// error details) goes into the page as a text node (textContent, never
// innerHTML), so it is shown as text whatever characters it holds.
"use strict";

const V = (() => {
  const TOKEN_KEY = "vitals.api-token";
  const BUCKETS = ["green", "yellow", "red"];

  // The token lives in this tab's sessionStorage only: it is gone when the tab closes.
  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function setToken(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  }

  class ApiError extends Error {
    constructor(status, body, message) {
      super(message);
      this.status = status; // 0: no answer at all
      this.body = body;
      this.reason = body && body.error ? String(body.error) : "";
    }
  }

  // GET or POST a JSON API path of this worker; resolves to the parsed body,
  // rejects with ApiError (status 0 when the worker does not answer).
  async function api(path, options = {}) {
    const headers = { Accept: "application/json" };
    const secret = token();
    if (secret) headers.Authorization = "Bearer " + secret;
    const init = { method: options.method || "GET", headers, cache: "no-store" };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (exc) {
      throw new ApiError(0, null, "the worker does not answer (" + exc.message + ")");
    }
    const text = await response.text();
    let body = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch (exc) {
        body = null;
      }
    }
    if (!response.ok) {
      const detail = body && body.detail ? String(body.detail) : response.statusText;
      throw new ApiError(response.status, body, detail);
    }
    return body;
  }

  // One line for a failed request, in words a reader can act on.
  function describeError(exc) {
    if (!(exc instanceof ApiError)) return String(exc && exc.message ? exc.message : exc);
    if (exc.status === 0) return "The worker does not answer: " + exc.message + ".";
    if (exc.status === 401) {
      return token()
        ? "The API refused the token (401): check it in the token field above."
        : "This API needs a token (401): enter it in the token field above.";
    }
    if (exc.reason === "owner_unreachable") {
      return "Another worker does not answer: " + exc.message + ". Its accounts cannot be shown until it is back or the group rebalances.";
    }
    if (exc.reason === "history_unavailable") {
      return "The history database does not answer: " + exc.message + ".";
    }
    return "Error " + exc.status + (exc.reason ? " (" + exc.reason + ")" : "") + ": " + exc.message;
  }

  // Timestamps arrive as epoch milliseconds or RFC 3339 strings; both give epoch ms.
  function toMs(value) {
    if (value === null || value === undefined || value === "") return null;
    if (typeof value === "number") return value;
    const ms = Date.parse(String(value));
    return Number.isNaN(ms) ? null : ms;
  }

  function fmtTime(value) {
    const ms = toMs(value);
    if (ms === null) return "–";
    return new Date(ms).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  function fmtDate(value) {
    const ms = toMs(value);
    return ms === null ? "–" : new Date(ms).toISOString().slice(0, 10);
  }

  function fmtNum(value, digits = 1) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
  }

  function fmtDelta(value) {
    if (value === null || value === undefined) return "–";
    const n = Number(value);
    return (n > 0 ? "+" : n < 0 ? "−" : "±") + Math.abs(n).toFixed(1);
  }

  function fmtMoney(value) {
    if (value === null || value === undefined) return "–";
    return Math.round(Number(value)).toLocaleString("en-US");
  }

  function fmtShare(value) {
    return value === null || value === undefined ? "–" : (100 * Number(value)).toFixed(1) + "%";
  }

  // el("a", {class: "x", href: "...", text: "..."}, child, "text", ...):
  // attributes are set with setAttribute, texts become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function replace(node, ...children) {
    node.replaceChildren();
    return append(node, children);
  }

  function badge(bucket) {
    const name = BUCKETS.includes(bucket) ? bucket : "unknown";
    return el("span", { class: "badge badge-" + name, text: bucket || "–" });
  }

  function accountHref(accountId) {
    return "account.html?id=" + encodeURIComponent(accountId);
  }

  // A message at the top of the page; kind: "error", "warning" or "info".
  function notice(area, kind, message) {
    area.append(el("div", { class: "notice notice-" + kind, role: "status", text: message }));
  }

  // The token field of the page header; onChange runs after it is set or forgotten.
  function installTokenBox(onChange) {
    const form = document.getElementById("token-form");
    const input = document.getElementById("token-input");
    const state = document.getElementById("token-state");
    const forget = document.getElementById("token-forget");
    function show() {
      state.textContent = token() ? "token set for this tab" : "no token";
      input.value = "";
    }
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      setToken(input.value.trim());
      show();
      onChange();
    });
    forget.addEventListener("click", () => {
      setToken("");
      show();
      onChange();
    });
    show();
  }

  // Run fn now and every periodMs while the tab is visible; never two at once
  // (a call while one runs runs once more after it, with the newest inputs).
  function every(periodMs, fn) {
    let running = false;
    let again = false;
    async function tick() {
      if (document.hidden) return;
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        do {
          again = false;
          await fn();
        } while (again);
      } finally {
        running = false;
      }
    }
    tick();
    const timer = setInterval(tick, periodMs);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) tick();
    });
    return { now: tick, stop: () => clearInterval(timer) };
  }

  return {
    ApiError, BUCKETS, accountHref, api, append, badge, describeError, el, every,
    fmtDate, fmtDelta, fmtMoney, fmtNum, fmtShare, fmtTime, installTokenBox, notice,
    replace, setToken, toMs, token,
  };
})();
