// Shared by every page: accessible dialogs (<dialog> with showModal: focus stays inside, Esc
// closes, focus goes back to the button that opened it), confirmations for forms marked
// data-confirm, copy buttons, and uptimes that keep counting.
(function () {
  "use strict";
  const Berth = (window.Berth = window.Berth || {});

  Berth.openDialog = function (dialog, opener) {
    dialog.addEventListener("close", () => { if (opener && opener.isConnected) opener.focus(); }, { once: true });
    dialog.showModal();
    const first = dialog.querySelector("[aria-invalid=true], input:not([type=hidden]):not([disabled]), select, textarea");
    if (first) first.focus();
  };

  document.addEventListener("click", (e) => {
    const closer = e.target.closest("dialog [data-close]");
    if (closer) closer.closest("dialog").close("cancel");
  });

  // One shared dialog for simple yes/no questions; built once, filled with text only.
  let confirmDialog = null;
  function buildConfirm() {
    const dialog = document.createElement("dialog");
    dialog.className = "dialog";
    dialog.id = "confirm-dialog";
    dialog.setAttribute("aria-labelledby", "confirm-dialog-text");
    const text = document.createElement("p");
    text.id = "confirm-dialog-text";
    const buttons = document.createElement("div");
    buttons.className = "dialog-buttons";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.textContent = "Cancel";
    cancel.dataset.close = "";
    const ok = document.createElement("button");
    ok.type = "button";
    ok.className = "danger-solid";
    ok.id = "confirm-dialog-ok";
    ok.addEventListener("click", () => dialog.close("ok"));
    buttons.append(cancel, ok);
    dialog.append(text, buttons);
    document.body.append(dialog);
    return dialog;
  }

  Berth.confirm = function (message, label, opener) {
    confirmDialog = confirmDialog || buildConfirm();
    confirmDialog.querySelector("#confirm-dialog-text").textContent = message;
    confirmDialog.querySelector("#confirm-dialog-ok").textContent = label || "OK";
    return new Promise((resolve) => {
      confirmDialog.addEventListener("close", () => resolve(confirmDialog.returnValue === "ok"), { once: true });
      confirmDialog.returnValue = "";
      Berth.openDialog(confirmDialog, opener);
      confirmDialog.querySelector("#confirm-dialog-ok").focus();
    });
  };

  document.addEventListener("submit", async (e) => {
    const form = e.target;
    if (!form.matches("form[data-confirm]")) return;
    e.preventDefault();
    const button = form.querySelector("[type=submit]");
    if (await Berth.confirm(form.dataset.confirm, form.dataset.confirmLabel, button)) form.submit();
  });

  document.addEventListener("click", async (e) => {
    const button = e.target.closest("[data-copy]");
    if (!button) return;
    const input = document.getElementById(button.dataset.copy);
    input.select();
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (err) {
      document.execCommand("copy");  // plain http on a LAN has no clipboard API
    }
    button.textContent = "Copied";
  });

  // "3 d 4 h", "5 min 2 s": the same words as the server's |since filter.
  Berth.span = function (seconds) {
    seconds = Math.floor(seconds);
    if (seconds < 1) return "under 1 s";
    const units = [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]];
    const first = units.findIndex(([, size]) => seconds >= size);
    return units.slice(first, first + 2).map(([name, size]) => {
      const count = Math.floor(seconds / size);
      seconds %= size;
      return `${count} ${name}`;
    }).join(" ");
  };

  function tickUptimes() {
    document.querySelectorAll("[data-since]").forEach((el) => {
      el.textContent = Berth.span((Date.now() - Date.parse(el.dataset.since)) / 1000);
    });
  }
  setInterval(tickUptimes, 1000);

  Berth.debounce = function (fn, ms) {
    let timer = null;
    return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  };

  // Replace an element's content with a server-rendered part of the page.
  Berth.refreshPart = async function (container, url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (!response.ok) return false;
    container.innerHTML = await response.text();
    return true;
  };

  // After the live connection comes back, a page may have missed events: let it catch up.
  let wasConnected = false;
  new MutationObserver(() => {
    const live = document.documentElement.dataset.live;
    if (live === "connected" && wasConnected) document.dispatchEvent(new CustomEvent("berth:reconnected"));
    if (live === "connected") wasConnected = true;
  }).observe(document.documentElement, { attributes: true, attributeFilter: ["data-live"] });
})();
