// Charts as plain SVG: the score distribution, the score history with bucket
// bands and markers, and the driver bars. Texts go in as text nodes only.
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const COLOURS = { green: "#2e9d5b", yellow: "#d9a400", red: "#d64545" };
  const BANDS = { green: "#e5f4ea", yellow: "#fcf3d6", red: "#fbe3e3" };

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (name === "text") node.textContent = String(value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children.flat()) if (child) node.append(child);
    return node;
  }

  function title(text) {
    return svg("title", { text });
  }

  // fixed: drawn at its own size (texts stay 11-12 px), shrunk only to fit.
  function frame(width, height, label, fixed = false) {
    return svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      width: fixed ? width : "100%",
      role: "img",
      "aria-label": label,
      class: "chart",
    });
  }

  // distribution: [{green, yellow, red}, ...] accounts per 10-point bin.
  function distribution(bins) {
    const width = 520, height = 200, left = 34, bottom = 26, top = 10;
    const plotW = width - left - 8, plotH = height - bottom - top;
    const totals = bins.map((b) => (b.green || 0) + (b.yellow || 0) + (b.red || 0));
    const max = Math.max(1, ...totals);
    const root = frame(width, height, "Score distribution");
    const barW = plotW / bins.length;
    for (const frac of [0, 0.5, 1]) {
      const y = top + plotH * (1 - frac);
      root.append(svg("line", { x1: left, x2: width - 8, y1: y, y2: y, class: "grid" }));
      root.append(svg("text", { x: left - 4, y: y + 4, "text-anchor": "end", class: "axis", text: Math.round(max * frac) }));
    }
    bins.forEach((bin, i) => {
      let y = top + plotH;
      const x = left + i * barW + 2;
      for (const bucket of ["red", "yellow", "green"]) {
        const count = bin[bucket] || 0;
        if (!count) continue;
        const h = (plotH * count) / max;
        y -= h;
        root.append(svg("rect", { x, y, width: barW - 4, height: h, fill: COLOURS[bucket], class: "bar" },
          title(`score ${i * 10}-${i * 10 + 10}: ${count} ${bucket}`)));
      }
      root.append(svg("text", { x: left + i * barW + barW / 2, y: height - 8, "text-anchor": "middle", class: "axis", text: i * 10 }));
    });
    return root;
  }

  // History: scores [{t, score, bucket}], changes [{t, from, to, score}],
  // triggers [{t, playbook, reason}], buckets {green, yellow} thresholds.
  function history(scores, changes, triggers, buckets) {
    const width = 1200, height = 300, left = 36, right = 30, top = 10, bottom = 40;
    const plotW = width - left - right, plotH = height - top - bottom;
    const root = frame(width, height, "Score history");
    root.classList.add("history-chart");
    const times = [...scores.map((s) => s.t), ...changes.map((c) => c.t), ...triggers.map((t) => t.t)];
    let t0 = Math.min(...times), t1 = Math.max(...times);
    if (!(t1 > t0)) { t0 -= 3600e3; t1 += 3600e3; }
    const x = (t) => left + (plotW * (t - t0)) / (t1 - t0);
    const y = (score) => top + plotH * (1 - score / 100);
    const yellow = buckets ? buckets.yellow : 45, green = buckets ? buckets.green : 70;
    root.append(
      svg("rect", { x: left, y: y(100), width: plotW, height: y(green) - y(100), fill: BANDS.green, class: "band band-green" }, title(`green: score ${green} and above`)),
      svg("rect", { x: left, y: y(green), width: plotW, height: y(yellow) - y(green), fill: BANDS.yellow, class: "band band-yellow" }, title(`yellow: ${yellow} to ${green}`)),
      svg("rect", { x: left, y: y(yellow), width: plotW, height: y(0) - y(yellow), fill: BANDS.red, class: "band band-red" }, title(`red: below ${yellow}`)),
    );
    for (const s of [0, yellow, green, 100]) {
      root.append(svg("text", { x: left - 4, y: y(s) + 4, "text-anchor": "end", class: "axis", text: s }));
    }
    const days = (t1 - t0) / 86400e3;
    const ticks = 6;
    for (let i = 0; i <= ticks; i++) {
      const t = t0 + ((t1 - t0) * i) / ticks;
      const text = new Date(t).toISOString().slice(days > 3 ? 5 : 11, days > 3 ? 10 : 16);
      root.append(svg("text", { x: x(t), y: height - bottom + 14, "text-anchor": "middle", class: "axis", text }));
    }
    if (scores.length) {
      const points = scores.map((s) => `${x(s.t).toFixed(1)},${y(s.score).toFixed(1)}`).join(" ");
      root.append(svg("polyline", { points, class: "score-line", fill: "none" }));
      for (const s of scores) {
        root.append(svg("circle", { cx: x(s.t), cy: y(s.score), r: 2.5, fill: COLOURS[s.bucket] || "#555", class: "score-point" },
          title(`${new Date(s.t).toISOString().slice(0, 16)}Z score ${s.score.toFixed(1)} (${s.bucket})`)));
      }
    }
    for (const c of changes) {
      root.append(svg("g", { class: "change-marker" },
        svg("line", { x1: x(c.t), x2: x(c.t), y1: top, y2: top + plotH, stroke: COLOURS[c.to] || "#555", class: "marker-line" }),
        svg("circle", { cx: x(c.t), cy: y(c.score), r: 5, fill: COLOURS[c.to] || "#555", stroke: "#fff", "stroke-width": 1.5 }),
        title(`${new Date(c.t).toISOString().slice(0, 16)}Z bucket ${c.from} → ${c.to} at score ${c.score.toFixed(1)}`)));
    }
    const base = top + plotH + 24;
    for (const t of triggers) {
      const cx = x(t.t);
      root.append(svg("path", { d: `M${cx - 6},${base + 6} L${cx + 6},${base + 6} L${cx},${base - 5} Z`, class: "trigger-marker" },
        title(`${new Date(t.t).toISOString().slice(0, 16)}Z playbook ${t.playbook}: ${t.reason}`)));
    }
    return root;
  }

  // Drivers: [{label, metric, pull, score, weight, value}] sorted by pull;
  // bars go right (pulls the score up) or left (down) from the middle.
  function drivers(items) {
    // gap: room for the value text of a full-length bar pulling down.
    const rowH = 22, labelW = 480, gap = 44, barW = 420, width = labelW + gap + barW + 50;
    const height = Math.max(1, items.length) * rowH + 8;
    const root = frame(width, height, "Score drivers", true);
    root.classList.add("driver-chart");
    const max = Math.max(1, ...items.map((d) => Math.abs(d.pull)));
    const mid = labelW + gap + barW / 2;
    root.append(svg("line", { x1: mid, x2: mid, y1: 0, y2: height, class: "grid" }));
    items.forEach((d, i) => {
      const yTop = 2 + i * rowH;
      const w = ((barW / 2) * Math.abs(d.pull)) / max;
      const up = d.pull >= 0;
      const label = d.label.length > 72 ? d.label.slice(0, 71) + "…" : d.label;
      root.append(svg("g", { class: "driver " + (up ? "driver-up" : "driver-down") },
        svg("text", { x: labelW - 8, y: yTop + 15, "text-anchor": "end", class: "driver-label", text: label }),
        svg("rect", { x: up ? mid : mid - w, y: yTop + 3, width: Math.max(w, 1), height: rowH - 8, fill: up ? COLOURS.green : COLOURS.red }),
        svg("text", { x: up ? mid + w + 4 : mid - w - 4, y: yTop + 15, "text-anchor": up ? "start" : "end", class: "axis", text: (up ? "+" : "−") + Math.abs(d.pull).toFixed(1) }),
        title(`${d.label} (${d.metric}): value ${d.value === null ? "unknown" : d.value}, metric score ${d.score.toFixed(0)}, weight ${(100 * d.weight).toFixed(0)}% → ${(up ? "+" : "−") + Math.abs(d.pull).toFixed(1)} points`)));
    });
    return root;
  }

  return { COLOURS, distribution, drivers, history };
})();
