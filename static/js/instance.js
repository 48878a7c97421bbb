// The instance page's console: xterm.js over /ws/instances/<id>/console/ (the protocol is in
// panel/realtime/consoles.py). It reconnects with backoff while the instance runs and resumes
// where it was: it adds up the bytes it rendered since the server's last "cursor" message
// and reconnects with ?resume=<boot>:<offset>, so nothing is shown twice or lost. The server
// answers "reset" when that point is no longer kept (the screen is redrawn from the
// scrollback) and "gap" when this browser fell too far behind a flood. A data-url with
// ?mode=ro watches without typing. Actions, history, tabs and graphs are in instance-page.js.
(function () {
  "use strict";
  const consoleEl = document.getElementById("console");
  const statusEl = document.getElementById("console-status");
  const instanceId = Number(consoleEl.dataset.instance);
  const LIVE_STATES = ["running", "rebooting", "provisioning"];
  const CLOSE_ENDED = 4000;  // the server closed it: the instance was suspended or terminated
  let state = document.querySelector(`[data-instance-state="${instanceId}"]`).textContent.trim();

  function skippedText(bytes) {
    if (bytes < 1024) return `${bytes} bytes`;
    if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} KiB`;
    return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
  }

  const view = {
    term: null, fit: null, ws: null, delay: 500, cursor: null,
    readOnly: new URL(consoleEl.dataset.url, location.href).searchParams.get("mode") === "ro",

    setup() {
      this.term = new Terminal({ convertEol: false, cursorBlink: !this.readOnly, scrollback: 5000,
                                 disableStdin: this.readOnly,
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

    url() {
      const url = new URL(consoleEl.dataset.url, location.href);
      url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
      if (this.cursor) url.searchParams.set("resume", `${this.cursor.boot}:${this.cursor.offset}`);
      return url.toString();
    },

    send(bytes) {
      if (!this.readOnly && this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes);
    },

    sendResize(cols, rows) {
      if (!this.readOnly && this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify({ type: "resize", cols, rows }));
      }
    },

    sayConnected() {
      statusEl.textContent = !LIVE_STATES.includes(state)
        ? `Connected; the instance is ${state}. Its output appears here when it runs again.`
        : this.readOnly ? "Connected, read-only." : "Connected.";
    },

    control(message) {
      if (message.type === "cursor") {
        const at = message.resume.lastIndexOf(":");
        this.cursor = { boot: message.resume.slice(0, at), offset: Number(message.resume.slice(at + 1)) };
      } else if (message.type === "reset") {
        this.term.reset();
        this.cursor = null;
      } else if (message.type === "gap") {
        // Said where it happened, in the terminal itself (dim, on a line of its own), so the
        // output around it is not mistaken for contiguous; not counted in the resume offset.
        const skipped = skippedText(message.skipped_bytes);
        this.term.write(`\r\n\x1b[2m[… ${skipped} of output skipped …]\x1b[0m\r\n`);
        statusEl.textContent = `This browser fell behind: ${skipped} of output were skipped.`;
      } else if (message.type === "state") {
        // The socket stays open across a stop and start (the next boot arrives on it), so
        // "Connected." alone would claim a stopped instance can be typed to.
        state = message.state;
        if (this.ws && this.ws.readyState === WebSocket.OPEN) this.sayConnected();
      } else if (message.type === "error") {
        statusEl.textContent = message.detail;
      }
    },

    connect() {
      if (this.ws && this.ws.readyState <= WebSocket.OPEN) return;
      if (!LIVE_STATES.includes(state)) {
        statusEl.textContent = "The console is available while the instance is running.";
        return;
      }
      const ws = new WebSocket(this.url());
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onopen = () => {
        this.delay = 500;
        this.sayConnected();
        consoleEl.dataset.connected = "true";
        if (!this.cursor) this.term.reset();  // a fresh start: the whole scrollback follows
        this.sendResize(this.term.cols, this.term.rows);
        if (!this.readOnly) this.term.focus();
      };
      ws.onmessage = (msg) => {
        if (typeof msg.data === "string") {
          try { this.control(JSON.parse(msg.data)); } catch (err) { console.error("bad control message", err); }
          return;
        }
        const bytes = new Uint8Array(msg.data);
        this.term.write(bytes);
        if (this.cursor) this.cursor.offset += bytes.length;
      };
      ws.onclose = (event) => {
        consoleEl.dataset.connected = "false";
        if (event.code !== CLOSE_ENDED && LIVE_STATES.includes(state)) {
          statusEl.textContent = "Disconnected; reconnecting…";
          setTimeout(() => this.connect(), this.delay);
          this.delay = Math.min(this.delay * 2, 10000);
        } else {
          statusEl.textContent = `The console closed: the instance is ${state}.`;
        }
      };
    },
  };

  document.addEventListener("berth:event", (e) => {
    const event = e.detail;
    if (event.type === "instance.state" && event.instance.id === instanceId) {
      state = event.instance.state;
      if (state === "running") view.connect();
    }
  });

  view.setup();
  view.connect();
})();
