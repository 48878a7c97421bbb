// The instance page: actions without leaving the page, live operation rows, and the console.
(function () {
  "use strict";
  const actions = document.getElementById("actions");
  const instanceId = Number(actions.dataset.instance);
  const actionStates = JSON.parse(document.getElementById("action-states").textContent);
  const progress = document.getElementById("operation-progress");
  let state = document.querySelector(`[data-instance-state="${instanceId}"]`).textContent.trim();

  function refreshButtons() {
    actions.querySelectorAll("button[data-action]").forEach((button) => {
      button.disabled = !actionStates[button.dataset.action].includes(state);
    });
  }

  actions.querySelectorAll("form.action-form").forEach((form) => {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
      const button = form.querySelector("button");
      button.disabled = true;
      const response = await fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        progress.textContent = body.detail || "The action could not be started.";
        refreshButtons();
      } else {
        progress.textContent = `${button.textContent} queued…`;
      }
    });
  });

  const OP_RANK = { queued: 0, running: 1, succeeded: 2, failed: 2 };

  function upsertOperation(op) {
    let row = document.getElementById(`operation-${op.id}`);
    if (row && OP_RANK[row.querySelector(".op-state").textContent] > OP_RANK[op.state]) return false;
    if (!row) {
      row = document.createElement("tr");
      row.id = `operation-${op.id}`;
      row.innerHTML = '<td></td><td class="op-state"></td><td></td><td class="op-error"></td>';
      row.cells[0].textContent = op.action.replace("_", " ");
      row.cells[2].textContent = new Date().toLocaleTimeString();
      document.getElementById("operations").prepend(row);
    }
    row.querySelector(".op-state").textContent = op.state;
    row.querySelector(".op-error").textContent = op.error || "";
    return true;
  }

  document.addEventListener("berth:event", (e) => {
    const event = e.detail;
    if (event.type === "instance.state" && event.instance.id === instanceId) {
      state = event.instance.state;
      document.getElementById("instance-ipv4").textContent = event.instance.ipv4.join(", ") || "—";
      refreshButtons();
      if (state === "running") consoleView.connect();
    } else if (event.type === "operation" && event.operation.instance === instanceId) {
      const op = event.operation;
      if (!upsertOperation(op)) return;  // a late report of an operation already finished
      const label = op.action.replace("_", " ");
      progress.textContent = op.state === "failed" ? `${label} failed: ${op.error}` :
        op.state === "succeeded" ? "" : `${label} ${op.state}…`;
    }
  });

  // --- console -------------------------------------------------------------------------
  const consoleEl = document.getElementById("console");
  const statusEl = document.getElementById("console-status");
  const consoleView = {
    term: null, fit: null, ws: null, delay: 500,
    setup() {
      this.term = new Terminal({ convertEol: false, cursorBlink: true, scrollback: 5000,
                                 fontFamily: "ui-monospace, Menlo, Consolas, monospace", fontSize: 14 });
      this.fit = new FitAddon.FitAddon();
      this.term.loadAddon(this.fit);
      this.term.open(consoleEl);
      this.fit.fit();
      this.term.onData((data) => this.send(new TextEncoder().encode(data)));
      this.term.onBinary((data) => this.send(Uint8Array.from(data, (c) => c.charCodeAt(0))));
      this.term.onResize(({ cols, rows }) => this.sendResize(cols, rows));
      window.addEventListener("resize", () => this.fit.fit());
    },
    send(bytes) { if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes); },
    sendResize(cols, rows) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify({ type: "resize", cols, rows }));
      }
    },
    connect() {
      if (this.ws && this.ws.readyState <= WebSocket.OPEN) return;
      if (!["running", "rebooting", "provisioning"].includes(state)) {
        statusEl.textContent = "The console is available while the instance is running.";
        return;
      }
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      const ws = new WebSocket(`${scheme}://${location.host}${consoleEl.dataset.url}`);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onopen = () => {
        this.delay = 500;
        statusEl.textContent = "Connected.";
        consoleEl.dataset.connected = "true";
        this.term.reset();
        this.sendResize(this.term.cols, this.term.rows);
        this.term.focus();
      };
      ws.onmessage = (msg) => {
        if (typeof msg.data === "string") {
          const control = JSON.parse(msg.data);
          if (control.type === "error") statusEl.textContent = control.detail;
          return;
        }
        this.term.write(new Uint8Array(msg.data));
      };
      ws.onclose = () => {
        consoleEl.dataset.connected = "false";
        if (["running", "rebooting", "provisioning"].includes(state)) {
          statusEl.textContent = "Disconnected; reconnecting…";
          setTimeout(() => this.connect(), this.delay);
          this.delay = Math.min(this.delay * 2, 10000);
        } else {
          statusEl.textContent = `The console closed: the instance is ${state}.`;
        }
      };
    },
  };
  consoleView.setup();
  consoleView.connect();
})();
