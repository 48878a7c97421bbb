// The "Snapshots & backups" tab of an instance's page: its forms post for JSON (restores and
// deletions ask first, in a dialog: a restore destroys the current data), and the tab is
// re-rendered by the server when an event says one of its operations moved; progress ("Writing
// the archive: 42 %") shows live in its row. Without script the forms work as plain pages.
(function () {
  "use strict";
  const Berth = window.Berth;
  const part = document.getElementById("backups-part");
  if (!part) return;
  const instanceId = Number(part.dataset.instance);
  const ACTIONS = ["snapshot", "restore_snapshot", "delete_snapshot", "backup", "restore_backup", "terminate", "create"];

  const seen = {};  // operation id → last state: progress alone does not re-render the tab

  function say(text) {
    const box = part.querySelector("#backups-message");
    if (box) box.textContent = text;
  }

  // What the person has typed or ticked and not sent yet survives a re-render, and so does focus.
  function edits() {
    const changed = [];
    part.querySelectorAll("input[id], select[id]").forEach((el) => {
      if (el.type === "hidden") return;
      const dirty = el.type === "checkbox" ? el.checked !== el.defaultChecked :
        el.tagName === "SELECT" ? el.selectedIndex !== Math.max(0, Array.from(el.options).findIndex((o) => o.defaultSelected)) :
        el.value !== el.defaultValue;
      if (dirty) changed.push([el.id, el.type === "checkbox" ? el.checked : el.value]);
    });
    return { changed, focus: document.activeElement && part.contains(document.activeElement) ? document.activeElement.id : "" };
  }

  function reapply({ changed, focus }) {
    changed.forEach(([id, value]) => {
      const el = document.getElementById(id);
      if (!el || !part.contains(el)) return;
      if (el.type === "checkbox") el.checked = value; else el.value = value;
    });
    const focused = focus && document.getElementById(focus);
    if (focused && part.contains(focused)) focused.focus();
  }

  const refresh = Berth.debounce(async (keep) => {
    const text = keep ? (part.querySelector("#backups-message") || {}).textContent : "";
    let response;
    try {
      response = await fetch(part.dataset.url, { credentials: "same-origin", headers: { Accept: "text/html" } });
    } catch (err) {
      return;
    }
    if (!response.ok) return;
    const html = await response.text();
    const before = edits();  // read now, not before the fetch: typing goes on meanwhile
    part.innerHTML = html;
    reapply(before);
    if (text) say(text);
  }, 150);

  part.addEventListener("submit", async (e) => {
    const form = e.target.closest("form[data-backups-form]");
    if (!form) return;
    e.preventDefault();
    const button = form.querySelector("[type=submit]");
    if (form.dataset.ask && !(await Berth.confirm(form.dataset.ask, form.dataset.askLabel, button))) return;
    const body = form.method.toLowerCase() === "post" ? new FormData(form) : new FormData();
    if (form.dataset.ask) {
      body.set("confirm", "yes");
      body.set("csrfmiddlewaretoken", part.querySelector("[name=csrfmiddlewaretoken]").value);
    }
    button.disabled = true;
    let response, answer;
    try {
      response = await fetch(form.action, {
        method: "POST", body, credentials: "same-origin", headers: { Accept: "application/json" },
      });
      answer = await response.json().catch(() => ({}));
    } catch (err) {
      button.disabled = false;
      say("The panel could not be reached; try again.");
      return;
    }
    if (response.ok && answer.redirect) { window.location.assign(answer.redirect); return; }
    if (response.ok) form.reset();  // sent: what it held is no longer an unsent edit
    say(answer.detail || (response.ok ? "Done." : "That could not be done."));
    refresh(true);
  });

  document.addEventListener("berth:event", (e) => {
    const event = e.detail;
    if (event.type === "operation" && event.operation.instance === instanceId) {
      const op = event.operation;
      const cell = part.querySelector(`[data-progress-for="${op.id}"]`);
      if (cell && op.progress && op.state === "running") cell.textContent = op.progress;
      if (ACTIONS.includes(op.action) && seen[op.id] !== op.state) { seen[op.id] = op.state; refresh(true); }
    } else if (event.type === "instance.state" && event.instance.id === instanceId) {
      refresh(true);  // the buttons follow the state
    }
  });
  document.addEventListener("berth:reconnected", () => refresh(true));
  document.addEventListener("berth:tab", (e) => { if (e.detail === "backups") refresh(true); });
})();
