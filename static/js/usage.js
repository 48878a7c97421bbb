// The Usage tab: CPU, memory and network over the last hour or day, drawn with uPlot from
// /instances/<id>/usage/?window=…, refreshed every 30 s while the tab is open.
(function () {
  "use strict";
  const panel = document.getElementById("tab-usage");
  const summary = document.getElementById("usage-summary");
  const REFRESH_MS = 30000;
  const charts = {};
  let timer = null;
  let span = [0, 1];  // the window asked for: the time axis shows all of it, however few points

  const windowChoice = () => panel.querySelector("input[name=usage-window]:checked").value;
  const kib = (v) => (v == null ? null : v / 1024);
  const fmt = (v, unit, digits = 1) => (v == null ? "—" : `${v.toFixed(digits)} ${unit}`);

  const SPECS = {
    cpu: { label: "CPU", unit: "%", series: [{ label: "CPU", stroke: "#0b5cad", fill: "rgba(11,92,173,.12)" }],
           columns: (d) => [d.cpu_percent] },
    memory: { label: "Memory", unit: "MiB", series: [{ label: "Memory", stroke: "#067647", fill: "rgba(6,118,71,.12)" }],
              columns: (d) => [d.memory_mib] },
    net: { label: "Network", unit: "KiB/s",
           series: [{ label: "Received", stroke: "#8a5a00" }, { label: "Sent", stroke: "#5b21b6", dash: [6, 4] }],
           columns: (d) => [d.net_rx_bps.map(kib), d.net_tx_bps.map(kib)] },
  };

  function draw(name, data) {
    const el = document.getElementById(`chart-${name}`);
    const spec = SPECS[name];
    const columns = [data.t, ...spec.columns(data)];
    const width = Math.max(el.clientWidth, 240);
    if (charts[name]) {
      charts[name].setData(columns);
      charts[name].setSize({ width, height: 180 });
      return;
    }
    charts[name] = new uPlot({
      width, height: 180,
      scales: { x: { time: true, range: () => span }, y: { range: (u, min, max) => [0, Math.max(max || 0, name === "cpu" ? 100 : 1) * 1.05] } },
      axes: [{ stroke: "#5a6676" }, { stroke: "#5a6676", size: 56, values: (u, ticks) => ticks.map((v) => `${+v.toFixed(1)}`) }],
      series: [{}, ...spec.series.map((s) => ({ width: 2, spanGaps: false, value: (u, v) => fmt(v, spec.unit), ...s }))],
      legend: { live: true },
    }, columns, el);
  }

  function describe(data) {
    const latest = data.latest;
    if (!latest) {
      return "No samples yet for this period: the host measures a running instance every 30 seconds.";
    }
    const at = new Date(latest.at * 1000).toLocaleTimeString();
    return `Latest (${at}): CPU ${fmt(latest.cpu_percent, "%")}, memory ${fmt(latest.memory_mib, "MiB")} ` +
      `of ${data.memory_limit_mib} MiB, network ${fmt(kib(latest.net_rx_bps), "KiB/s")} received and ` +
      `${fmt(kib(latest.net_tx_bps), "KiB/s")} sent.`;
  }

  async function load() {
    clearTimeout(timer);
    if (panel.hidden) return;
    try {
      const response = await fetch(`${panel.dataset.url}?window=${windowChoice()}`, { credentials: "same-origin" });
      if (!response.ok) throw new Error(response.statusText);
      const data = await response.json();
      span = [data.from, data.to];
      for (const name of Object.keys(SPECS)) draw(name, data);
      summary.textContent = describe(data);
      panel.dataset.points = String(data.t.length);
    } catch (err) {
      summary.textContent = "The usage figures could not be loaded; retrying.";
    }
    timer = setTimeout(load, REFRESH_MS);
  }

  panel.querySelectorAll("input[name=usage-window]").forEach((input) => input.addEventListener("change", load));
  document.addEventListener("berth:tab", (e) => { if (e.detail === "usage") load(); else clearTimeout(timer); });
  window.addEventListener("resize", window.Berth.debounce(() => {
    if (panel.hidden) return;
    for (const [name, chart] of Object.entries(charts)) {
      chart.setSize({ width: Math.max(document.getElementById(`chart-${name}`).clientWidth, 240), height: 180 });
    }
  }, 200));
  summary.textContent = "";
  load();
})();
