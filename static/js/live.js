// Live events for every page: one WebSocket to /ws/events/, reconnecting with backoff.
// Updates any element marked data-instance-state="<id>" and re-dispatches each event as a
// "berth:event" DOM event so page scripts can react. Events from several panel workers can
// arrive out of order: each instance state carries a version, and an older one is dropped.
// Every event has a sequence number (seq): after a reconnect the socket asks for the events it
// missed (?since=<last seq>). When the server no longer has all of them it says "reload":
// that is dispatched as a cancelable "berth:event" too, and the page reloads unless a
// listener calls preventDefault() (and refreshes what it shows by itself).
(function () {
  "use strict";
  let delay = 500;
  let seq = document.documentElement.dataset.eventsSeq || null;  // as of the page's rendering
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

  function handle(message) {
    if (message.seq) seq = message.seq;
    if (message.type === "hello") return;
    if (message.type === "reload") {
      const unhandled = document.dispatchEvent(new CustomEvent("berth:event", { detail: message, cancelable: true }));
      if (unhandled) location.reload();
      return;
    }
    apply(message);
  }

  function connect() {
    const url = new URL("/ws/events/", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (seq) url.searchParams.set("since", seq);
    const ws = new WebSocket(url.toString());
    ws.onopen = () => {
      delay = 500;
      document.documentElement.dataset.live = "connected";
    };
    ws.onmessage = (msg) => {
      try { handle(JSON.parse(msg.data)); } catch (err) { console.error("bad event", err); }
    };
    ws.onclose = () => {
      document.documentElement.dataset.live = "reconnecting";
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }
  connect();
})();
