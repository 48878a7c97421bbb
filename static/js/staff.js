// Staff pages: live host status and capacity from the events socket (live.js re-dispatches
// each event as a "berth:event" DOM event), graphs drawn from the host's samples, confirm
// prompts and the bulk selection.
(function () {
  "use strict";
  const hostPage = document.querySelector("[data-live-url]");
  const fleet = document.querySelector("[data-live-fleet]");

  // --- confirmations and bulk selection ---------------------------------------------------
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (e) => { if (!confirm(form.dataset.confirm)) e.preventDefault(); });
  });
  const bulk = document.getElementById("bulk-form");
  if (bulk) {
    const risky = (bulk.dataset.confirmActions || "").split(",");
    bulk.addEventListener("submit", (e) => {
      const action = bulk.querySelector("select[name=action]").value;
      const n = document.querySelectorAll("input[name=instances]:checked").length;
      if (n && risky.includes(action) && !confirm(`${action} ${n} instance${n === 1 ? "" : "s"}?`)) e.preventDefault();
    });
  }
  document.querySelectorAll("[data-select-all]").forEach((box) => {
    box.addEventListener("change", () => {
      document.querySelectorAll("input[name=instances]").forEach((b) => { b.checked = box.checked; });
    });
  });

  // --- live updates -----------------------------------------------------------------------
  function setBar(key, gauge) {
    const bar = document.querySelector(`[data-bar="${key}"]`);
    if (!bar || !gauge) return;
    const fill = bar.querySelector(".bar-fill");
    fill.style.width = `${gauge.percent}%`;
    fill.classList.toggle("bar-high", gauge.percent >= 90);
    bar.setAttribute("aria-valuenow", Math.round(gauge.used));
    bar.setAttribute("aria-valuemax", Math.round(gauge.limit));
    const text = document.querySelector(`[data-bar-text="${key}"]`);
    if (text) text.textContent = text.textContent.replace(/^[\d.]+ \/ [\d.]+/, `${+gauge.used.toFixed(1)} / ${+gauge.limit.toFixed(1)}`);
  }

  function setHostStatus(id, status) {
    document.querySelectorAll(`[data-host-status="${id}"]`).forEach((el) => {
      el.textContent = status === "unknown" ? "never seen" : status;
      el.className = `badge host-${status}`;
    });
    // Instances of a host that is not reporting show as unknown (display only).
    document.querySelectorAll(`[data-unknown-for-host="${id}"]`).forEach((el) => {
      const state = el.parentElement.querySelector("[data-instance-state]");
      const settled = state && !["pending", "terminated"].includes(state.textContent.trim());
      el.hidden = status === "online" || !settled;
    });
  }

  function drawGraph(svg, values) {
    if (!values.length) return;
    const max = Math.max(...values, 1e-9);
    const step = values.length > 1 ? 300 / (values.length - 1) : 0;
    const points = values.map((v, i) => `${(i * step).toFixed(1)},${(58 - (v / max) * 54).toFixed(1)}`).join(" ");
    svg.innerHTML = `<polyline points="${points}"></polyline>`;
    const now = +values[values.length - 1].toFixed(2);
    const summary = `now ${now}, peak ${+max.toFixed(2)}`;
    svg.setAttribute("aria-label", `${svg.getAttribute("aria-label").split(":")[0]}: ${summary}`);
    const label = document.querySelector(`[data-graph-label="${svg.dataset.graph}"]`);
    if (label) label.textContent = summary;
  }

  async function refreshHost() {
    const data = await (await fetch(hostPage.dataset.liveUrl, { headers: { Accept: "application/json" } })).json();
    ["vcpus", "memory", "disk", "ips", "real_memory"].forEach((k) => setBar(k, data[k]));
    setHostStatus(data.id, data.status);
    document.querySelectorAll("[data-graph]").forEach((svg) => drawGraph(svg, data.samples.map((s) => s[svg.dataset.graph])));
    const beat = document.querySelector("[data-last-heartbeat]");
    if (beat && data.last_heartbeat) beat.textContent = `${data.last_heartbeat.replace("T", " ").slice(0, 19)} UTC`;
  }

  async function refreshFleet() {
    const data = await (await fetch(fleet.dataset.liveFleet, { headers: { Accept: "application/json" } })).json();
    const totals = {};
    for (const host of data.hosts) {
      ["vcpus", "memory", "ips"].forEach((k) => setBar(`${host.id}-${k}`, host[k]));
      setHostStatus(host.id, host.status);
      const n = document.querySelector(`[data-host-instances="${host.id}"]`);
      if (n) n.textContent = host.instances;
      if (host.enabled && !host.draining && host.status === "online") {
        ["vcpus", "memory", "disk", "ips"].forEach((k) => {
          totals[k] = totals[k] || { used: 0, limit: 0 };
          totals[k].used += host[k].used;
          totals[k].limit += host[k].limit;
        });
      }
    }
    Object.entries(totals).forEach(([k, g]) => setBar(`total-${k}`, { ...g, percent: g.limit ? Math.min(100, Math.round(100 * g.used / g.limit)) : 0 }));
  }

  let pending = null;
  function scheduleRefresh() {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      try {
        if (hostPage) await refreshHost();
        if (fleet) await refreshFleet();
      } catch (err) { console.warn("staff refresh failed", err); }
    }, 1000);
  }

  document.addEventListener("berth:event", (e) => {
    const event = e.detail;
    if (event.type === "host.status") {
      setHostStatus(event.host.id, event.host.status);
      if (!hostPage || String(event.host.id) === hostPage.dataset.hostPage) scheduleRefresh();
    } else if (event.type === "instance.state" || event.type === "operation") {
      scheduleRefresh();
      if (moves && event.type === "operation" && event.operation.action === "move") scheduleMoves();
    }
  });

  // A host's evacuation: its progress list is re-fetched when one of its moves reports.
  const moves = document.querySelector("[data-moves-url]");
  let movesPending = null;
  function scheduleMoves() {
    if (movesPending) return;
    movesPending = setTimeout(async () => {
      movesPending = null;
      try {
        const response = await fetch(moves.dataset.movesUrl, { headers: { Accept: "text/html" } });
        if (response.ok) moves.innerHTML = await response.text();
      } catch (err) { console.warn("moves refresh failed", err); }
    }, 500);
  }
  if (hostPage || fleet) {
    scheduleRefresh();
    setInterval(scheduleRefresh, 15000);  // heartbeats stop when a host dies: keep ages current
  }
})();
