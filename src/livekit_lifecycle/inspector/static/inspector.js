// livekit-lifecycle inspector: rows from /api/events (server-sent events), the chart from
// /chart.svg, the selected session's state highlighted in the chart.
"use strict";
(function () {
  const token = new URLSearchParams(location.search).get("token");
  const withToken = (path) => (token ? `${path}?token=${encodeURIComponent(token)}` : path);
  const rows = new Map(); // "room\u0000key" -> session row
  let selected = null;
  let lastTransition = new Map(); // row id -> transition that produced its state
  const tbody = document.querySelector("#rows tbody");
  const status = document.getElementById("status");

  const idOf = (row) => `${row.room}\u0000${row.key}`;
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    for (const child of children) node.append(child);
    return node;
  };

  function render() {
    const all = [...rows.values()];
    document.body.classList.toggle("rooms", new Set(all.map((r) => r.room)).size > 1);
    document.body.classList.toggle("data", all.some((r) => r.data !== undefined));
    document.getElementById("empty").hidden = all.length > 0;
    if (selected === null || !rows.has(selected)) {
      const live = all.find((r) => r.state !== "removed") || all[0];
      selected = live ? idOf(live) : null;
    }
    tbody.replaceChildren(...all.map(renderRow));
    highlight();
  }

  function renderRow(row) {
    const id = idOf(row);
    const history = (row.history || []).slice(-3).map((t) =>
      el("span", { title: new Date(t.at * 1000).toLocaleTimeString() },
        `${t.source} →${t.trigger}→ ${t.dest}`));
    const tr = el("tr", { "data-key": row.key, "data-room": row.room, "data-state": row.state },
      el("td", { class: "room-col" }, row.room),
      el("td", { class: "key", title: `identity ${row.identity}, sid ${row.sid}` }, row.key),
      el("td", {}, el("span", { class: `state state-${row.state}` }, row.state)),
      el("td", {}, row.user_id ?? ""),
      el("td", { class: "num reconnects" }, String(row.reconnects)),
      el("td", { class: "num cleanups" }, String(row.cleanups)),
      el("td", { class: "num" }, String((row.tracks || []).length)),
      el("td", { class: "history" }, ...history),
      el("td", { class: "data-col" }, row.data === undefined ? "" : JSON.stringify(row.data)));
    if (row.state === "removed") tr.classList.add("removed");
    if (id === selected) tr.classList.add("selected");
    tr.addEventListener("click", () => { selected = id; render(); });
    return tr;
  }

  function highlight() {
    const svg = document.querySelector("#svg svg");
    const row = selected === null ? null : rows.get(selected);
    document.getElementById("selected").textContent =
      row ? `${row.key}: ${row.state}` : "nothing selected";
    if (!svg) return;
    svg.querySelectorAll(".lc-current, .lc-last").forEach((g) =>
      g.classList.remove("lc-current", "lc-last"));
    if (!row) return;
    for (const node of svg.querySelectorAll("g.node.state")) {
      if (node.querySelector("title")?.textContent === row.state) node.classList.add("lc-current");
    }
    const history = row.history || [];
    const last = history[history.length - 1];
    if (last && last.dest === row.state) {
      const edges = [...svg.querySelectorAll("g.edge.transition")].filter((g) =>
        g.querySelector("title")?.textContent === `${last.source}->${last.dest}`);
      const exact = edges.filter((g) => (g.textContent || "").includes(last.trigger));
      (exact.length ? exact : edges).forEach((g) => g.classList.add("lc-last"));
    }
  }

  function upsert(row) {
    rows.delete(idOf(row)); // re-inserted last, as the server orders them
    rows.set(idOf(row), row);
  }

  async function loadChart() {
    const response = await fetch(withToken("chart.svg"));
    const box = document.getElementById("svg");
    if (!response.ok) {
      box.textContent = `No diagram: ${await response.text()}`;
      return;
    }
    // Our own server's Graphviz output, parsed as SVG (scripts in it would not run).
    const doc = new DOMParser().parseFromString(await response.text(), "image/svg+xml");
    box.replaceChildren(document.importNode(doc.documentElement, true));
    highlight();
  }

  function showProblem(problem) {
    status.className = problem ? "status outage" : "status live";
    status.textContent = problem ? `source unavailable: ${problem}` : "live";
  }

  function connect() {
    const events = new EventSource(withToken("api/events"));
    events.addEventListener("snapshot", (event) => {
      const state = JSON.parse(event.data);
      document.getElementById("source").textContent = state.source;
      rows.clear();
      state.rows.forEach(upsert);
      showProblem(state.problem);
      render();
    });
    // The source cannot be read (a store outage): rows stay as last seen until it answers.
    events.addEventListener("status", (event) => showProblem(JSON.parse(event.data).problem));
    events.addEventListener("change", (event) => {
      const change = JSON.parse(event.data);
      document.getElementById("source").textContent = change.source;
      upsert(change.row);
      render();
    });
    events.onerror = () => {
      status.className = "status lost";
      status.textContent = "reconnecting…";
    };
  }

  loadChart();
  connect();
})();
