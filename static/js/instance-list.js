// The instance list, live: badges change through live.js; here addresses and uptimes follow
// state events, and the table is re-rendered by the server when an instance appears, leaves
// the current filter, or events may have been missed.
(function () {
  "use strict";
  const Berth = window.Berth;
  const table = document.getElementById("instance-table");
  const stateFilter = document.getElementById("id_state");
  const UP = ["running", "rebooting"];

  const refresh = Berth.debounce(() => Berth.refreshPart(table, table.dataset.rowsUrl), 300);

  document.addEventListener("berth:event", (e) => {
    const event = e.detail;
    if (event.type !== "instance.state") return;
    const inst = event.instance;
    const row = table.querySelector(`[data-instance-row="${inst.id}"]`);
    if (!row || (stateFilter.value && stateFilter.value !== inst.state) || inst.state === "terminated") {
      refresh();
      return;
    }
    const ips = row.querySelector(`[data-instance-ipv4="${inst.id}"]`);
    ips.textContent = inst.ipv4.join(", ") || "—";
    const uptime = row.querySelector(`[data-uptime="${inst.id}"]`);
    if (!UP.includes(inst.state)) {
      delete uptime.dataset.since;
      uptime.textContent = "—";
    } else if (!uptime.dataset.since && !UP.includes(event.previous_state)) {
      uptime.dataset.since = event.at;
      uptime.textContent = Berth.span(0);
    }
  });
  document.addEventListener("berth:reconnected", refresh);
})();
