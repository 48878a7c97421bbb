// The instance page around its console: actions without leaving the page (confirmations in
// dialogs, the server's reason shown when the state changed meanwhile), buttons enabled by
// state, live progress, summary and history re-rendered by the server when events say they
// changed, and the tabs (console, screen, usage, history).
(function () {
  "use strict";
  const Berth = window.Berth;
  const actionsCard = document.getElementById("actions-card");
  const actions = document.getElementById("actions");
  const instanceId = Number(actions.dataset.instance);
  const actionStates = JSON.parse(document.getElementById("action-states").textContent);
  const progress = document.getElementById("operation-progress");
  const message = document.getElementById("action-message");
  const summary = document.getElementById("instance-summary");
  const historyBox = document.getElementById("history");
  const badge = document.querySelector(`[data-instance-state="${instanceId}"]`);
  let state = badge.textContent.trim();
  const unfinished = new Set(actions.dataset.busy ? [Number(actions.dataset.busy)] : []);
  const GONE = ["suspended", "terminated"];  // no actions for the customer in these states
  // The server hid the actions for another reason (a suspended account): no event lifts that.
  const refusedByServer = actionsCard.hidden && !GONE.includes(state);
  const actionLabel = (name) => name.charAt(0).toUpperCase() + name.slice(1).replace("_", " ");

  function refreshButtons() {
    actions.querySelectorAll("button[data-action]").forEach((button) => {
      button.disabled = unfinished.size > 0 || !actionStates[button.dataset.action].includes(state);
    });
    document.getElementById("actions-hint").hidden = unfinished.size === 0;
    actionsCard.hidden = refusedByServer || GONE.includes(state);
  }

  function say(text) {
    message.textContent = text;
  }

  async function post(form) {
    const response = await fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    });
    return { response, body: await response.json().catch(() => ({})) };
  }

  function accepted(body, label) {
    say("");
    unfinished.add(body.operation);
    progress.textContent = `${label} queued…`;
    refreshButtons();
  }

  // Actions that need no confirmation post straight away.
  actions.querySelectorAll("form.action-form:not([data-dialog])").forEach((form) => {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const button = form.querySelector("button");
      button.disabled = true;
      const { response, body } = await post(form);
      if (response.ok) accepted(body, button.textContent.trim());
      else { say(body.detail || "The action could not be started."); refreshButtons(); }
    });
  });

  // The others open their dialog; without script the same form is a page of its own.
  actions.querySelectorAll("form.action-form[data-dialog]").forEach((form) => {
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const dialog = document.getElementById(form.dataset.dialog);
      dialog.querySelector("form").reset();
      showErrors(dialog, {});
      Berth.openDialog(dialog, form.querySelector("button"));
    });
  });

  function showErrors(dialog, errors) {
    dialog.querySelectorAll("[data-errors-for]").forEach((list) => {
      const messages = errors[list.dataset.errorsFor] || [];
      list.replaceChildren(...messages.map((text) => Object.assign(document.createElement("li"), { textContent: text })));
      list.hidden = messages.length === 0;
      const field = dialog.querySelector(`[name="${list.dataset.errorsFor}"]`);
      if (field) {
        dialog.querySelectorAll(`[name="${list.dataset.errorsFor}"]`).forEach((input) => {
          if (messages.length) input.setAttribute("aria-invalid", "true");
          else input.removeAttribute("aria-invalid");
        });
        if (messages.length) field.focus();
      }
    });
  }

  document.querySelectorAll("dialog form.dialog-form").forEach((form) => {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const dialog = form.closest("dialog");
      const submit = form.querySelector("[type=submit]");
      submit.disabled = true;
      try {
        const { response, body } = await post(form);
        if (response.status === 400 && body.errors) {
          showErrors(dialog, body.errors);
          return;
        }
        dialog.close();
        if (response.ok) accepted(body, actionLabel(form.action.split("/").filter(Boolean).pop()));
        else { say(body.detail || "The action could not be started."); refreshButtons(); }
      } finally {
        submit.disabled = false;
      }
    });
  });

  // --- live parts ---------------------------------------------------------------------------
  const refreshSummary = Berth.debounce(() => Berth.refreshPart(summary, summary.dataset.url), 150);
  const refreshHistory = Berth.debounce(async () => {
    if (!(await Berth.refreshPart(historyBox, historyBox.dataset.url))) return;
    // The server's rows are the truth about what is unfinished (events may have been missed).
    unfinished.clear();
    historyBox.querySelectorAll("tr[data-state=queued], tr[data-state=running]").forEach((row) => {
      unfinished.add(Number(row.id.replace("operation-", "")));
    });
    refreshButtons();
  }, 150);

  document.addEventListener("berth:event", (e) => {
    const event = e.detail;
    if (event.type === "instance.state" && event.instance.id === instanceId) {
      state = event.instance.state;
      refreshButtons();
      refreshSummary();
      if (state === "terminated") progress.textContent = "Terminated.";
    } else if (event.type === "operation" && event.operation.instance === instanceId) {
      const op = event.operation;
      if (op.state === "succeeded" || op.state === "failed") unfinished.delete(op.id);
      else unfinished.add(op.id);
      const label = actionLabel(op.action);
      const detail = op.progress ? `: ${op.progress}` : "";
      progress.textContent = op.state === "failed" ? `${label} failed: ${op.error}` :
        op.state === "succeeded" ? "" : `${label} ${op.state}${detail}…`;
      refreshButtons();
      refreshHistory();
    }
  });
  document.addEventListener("berth:reconnected", () => { refreshSummary(); refreshHistory(); });
  // Opening the history shows it as it is now, whatever events were missed or are on their way.
  document.addEventListener("berth:tab", (e) => { if (e.detail === "history") refreshHistory(); });

  // --- the screen's viewer -------------------------------------------------------------------
  // js/vnc.js (a module: noVNC is ~40 files) runs only if every file arrived. If one did not
  // (a network blip), say so in the Screen tab rather than leave its placeholder up for good.
  // Load errors do not bubble: caught on their way down, before they reach the script.
  window.addEventListener("error", (e) => {
    const box = document.getElementById("vnc");
    if (!box || !(e.target instanceof HTMLScriptElement) || !e.target.src.endsWith("/js/vnc.js")) return;
    const note = Object.assign(document.createElement("p"), {
      className: "help", id: "vnc-status",
      textContent: "The screen viewer could not be loaded. Reload the page to try again.",
    });
    note.setAttribute("role", "status");
    box.replaceChildren(note);
  }, true);

  // --- tabs ---------------------------------------------------------------------------------
  const tablist = document.querySelector("#instance-tabs [role=tablist]");
  const tabs = Array.from(tablist.querySelectorAll("[role=tab]"));
  const panelOf = (tab) => document.getElementById(tab.getAttribute("aria-controls"));

  function select(tab, { focus = false, remember = true } = {}) {
    tabs.forEach((t) => {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      panelOf(t).hidden = !on;
    });
    if (focus) tab.focus();
    if (remember) window.history.replaceState(null, "", `#${panelOf(tab).id}`);
    // xterm measures its box on resize; a panel that was hidden had none.
    window.dispatchEvent(new Event("resize"));
    document.dispatchEvent(new CustomEvent("berth:tab", { detail: tab.dataset.tab }));
  }

  tabs.forEach((tab) => {
    const panel = panelOf(tab);
    panel.setAttribute("aria-labelledby", tab.id);
    panel.querySelector(".panel-title").classList.add("visually-hidden");
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (e) => {
      const i = tabs.indexOf(tab);
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
      if (next === undefined) return;
      e.preventDefault();
      select(tabs[(next + tabs.length) % tabs.length], { focus: true });
    });
  });
  tablist.hidden = false;
  const wanted = tabs.find((t) => `#${panelOf(t).id}` === location.hash) || tabs[0];
  select(wanted, { remember: false });
  refreshButtons();
})();
