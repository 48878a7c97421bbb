// Live events for every page: one WebSocket to /ws/events/, reconnecting with backoff.
// Updates any element marked data-instance-state="<id>" and re-dispatches each event as a
// "berth:event" DOM event so page scripts can react. Events from several panel workers can
// arrive out of order: each instance state carries a version, and an older one is dropped.
(function () {
  "use strict";
  let delay = 500;
  const versions = {};
  document.querySelectorAll("[data-instance-state]").forEach((el) => {
    versions[el.dataset.instanceState] = Number(el.dataset.stateVersion || 0);
  });

  function apply(event) {
    if (event.type === "instance.state") {
      const inst = event.instance;
      if (inst.version <= (versions[inst.id] ?? -1)) return;
      versions[inst.id] = inst.version;
      document.querySelectorAll(`[data-instance-state="${inst.id}"]`).forEach((el) => {
        el.textContent = inst.state;
        el.dataset.stateVersion = inst.version;
        el.className = el.className.replace(/\bstate-\S+/g, "").trim() + ` state-${inst.state}`;
      });
    }
    document.dispatchEvent(new CustomEvent("berth:event", { detail: event }));
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws/events/`);
    ws.onopen = () => {
      delay = 500;
      document.documentElement.dataset.live = "connected";
    };
    ws.onmessage = (msg) => {
      try { apply(JSON.parse(msg.data)); } catch (err) { console.error("bad event", err); }
    };
    ws.onclose = () => {
      document.documentElement.dataset.live = "reconnecting";
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }
  connect();
})();
