// The VM's screen (graphical console) on the instance page: noVNC over /ws/instances/<id>/vnc/.
//
// Load it as a module: <script type="module" src="{% static 'js/vnc.js' %}"></script>.
// The page gives it <div id="vnc" data-instance="<id>"> in its "Screen" tab
// (templates/instances/detail.html). The screen connects when that tab is shown while the VM
// runs (no VNC traffic otherwise), follows the VM's state from the page's live events
// ("berth:event", static/js/live.js) and reconnects after a restart. The server side is
// panel/realtime/vnc.py; nothing here talks to a host.
import RFB from "../vendor/novnc/core/rfb.js";

const container = document.getElementById("vnc");
const LIVE = ["running", "rebooting", "provisioning"];

if (container) {
  const instanceId = Number(container.dataset.instance);
  const panel = container.closest("[role=tabpanel]") || container;
  const badge = document.querySelector(`[data-instance-state="${instanceId}"]`);
  let state = badge ? badge.textContent.trim() : "running";
  let rfb = null;
  let delay = 1000;
  let retry = null;

  const bar = document.createElement("div");
  bar.className = "vnc-bar";
  Object.assign(bar.style, { display: "flex", alignItems: "center", gap: "1rem",
                             justifyContent: "space-between", padding: "0.5rem 0.75rem" });
  const status = document.createElement("p");
  status.className = "help";
  status.id = "vnc-status";
  status.setAttribute("aria-live", "polite");
  status.style.margin = "0";
  const cad = document.createElement("button");
  cad.type = "button";
  cad.textContent = "Send Ctrl+Alt+Del";
  cad.disabled = true;
  cad.addEventListener("click", () => rfb && rfb.sendCtrlAltDel());
  bar.append(status, cad);
  const screen = document.createElement("div");
  screen.className = "vnc-screen";
  screen.style.width = "100%";
  screen.style.height = "min(70vh, 768px)";
  screen.setAttribute("role", "application");
  screen.setAttribute("aria-label", "Screen of the VM; keys typed here go to the VM");
  container.replaceChildren(bar, screen);
  container.style.display = "block";

  const shown = () => !panel.hidden;
  const say = (text) => { status.textContent = text; };

  function connect() {
    clearTimeout(retry);
    if (rfb || !shown()) return;
    if (!LIVE.includes(state)) {
      say(`The screen is available while the VM is running; it is ${state}.`);
      return;
    }
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    say("Connecting…");
    rfb = new RFB(screen, `${scheme}://${location.host}/ws/instances/${instanceId}/vnc/`);
    rfb.scaleViewport = true;
    rfb.background = "#1c2430";
    rfb.addEventListener("connect", () => {
      delay = 1000;
      say("Connected. Click the screen to type into the VM.");
      cad.disabled = false;
      container.dataset.connected = "true";
    });
    rfb.addEventListener("disconnect", (e) => {
      rfb = null;
      cad.disabled = true;
      container.dataset.connected = "false";
      if (LIVE.includes(state) && shown()) {
        say(e.detail.clean ? "The screen closed; reconnecting…" : "Connection lost; reconnecting…");
        retry = setTimeout(connect, delay);
        delay = Math.min(delay * 2, 10000);
      } else {
        say(`The screen closed: the VM is ${state}.`);
      }
    });
  }

  function disconnect() {
    clearTimeout(retry);
    if (rfb) rfb.disconnect();
  }

  document.addEventListener("berth:tab", (e) => (e.detail === "screen" ? connect() : disconnect()));
  document.addEventListener("berth:event", (e) => {
    const event = e.detail;
    if (event.type !== "instance.state" || event.instance.id !== instanceId) return;
    state = event.instance.state;
    if (LIVE.includes(state)) connect();
  });
  connect();
}
