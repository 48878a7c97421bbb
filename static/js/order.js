// The order page: plans and images of the chosen kind only, the hostname checked as it is
// typed (the same rules and words as panel/instances/validators.py, which checks it again),
// the price and the quota left after this order, and one order per click.
(function () {
  "use strict";
  const form = document.getElementById("order-form");
  if (!form) return;
  const $ = (selector) => form.querySelector(selector);
  const $$ = (selector) => Array.from(form.querySelectorAll(selector));
  const hostname = $("#id_hostname");
  const hostnameErrors = $("#id_hostname_error");
  const quota = document.getElementById("quota-left").dataset;
  // Memory as the server's |mib filter writes it: 512 MiB, 2 GiB, 1.5 GiB.
  const mib = (n) => (n >= 1024 ? `${+(n / 1024).toFixed(1)} GiB` : `${n} MiB`);

  // --- kind → plans and images --------------------------------------------------------------
  function chosen(name) {
    return $(`input[name=${name}]:checked`);
  }

  function showKind(kind) {
    for (const name of ["plan", "image"]) {
      const cards = $$(`#${name}-step [data-kind]`);
      cards.forEach((card) => { card.hidden = card.dataset.kind !== kind; });
      const current = chosen(name);
      if (!current || current.closest("[data-kind]").hidden) {
        if (current) current.checked = false;
        const first = cards.find((c) => !c.hidden && !c.querySelector("input").disabled);
        if (first) first.querySelector("input").checked = true;
      }
    }
  }

  // --- hostname -----------------------------------------------------------------------------
  const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
  function hostnameProblem(value) {
    const name = value.trim().toLowerCase();
    if (!name) return "Enter a hostname.";
    if (name.length > 63) return "A hostname is at most 63 characters long.";
    if (!LABEL.test(name)) return "Use only letters, digits and hyphens, and do not start or end with a hyphen.";
    if (/^[0-9]+$/.test(name)) return "A hostname cannot be only digits.";
    return "";
  }

  function checkHostname(final) {
    const problem = hostnameProblem(hostname.value);
    const show = problem && (final || hostname.value !== "");
    hostnameErrors.replaceChildren(...(show ? [Object.assign(document.createElement("li"), { textContent: problem })] : []));
    hostnameErrors.hidden = !show;
    hostname.closest(".field").classList.toggle("has-error", Boolean(show));
    if (show) hostname.setAttribute("aria-invalid", "true");
    else hostname.removeAttribute("aria-invalid");
    hostname.setAttribute("aria-describedby", show ? "id_hostname_helptext id_hostname_error" : "id_hostname_helptext");
    return !problem;
  }

  // --- access -------------------------------------------------------------------------------
  function showAccess() {
    const access = chosen("access");
    $$(".access-panel").forEach((panel) => { panel.hidden = !access || panel.dataset.access !== access.value; });
  }

  // --- summary ------------------------------------------------------------------------------
  function summarise() {
    const plan = chosen("plan");
    const image = chosen("image");
    const price = document.getElementById("sum-price");
    const after = document.getElementById("quota-after");
    document.getElementById("sum-image").textContent = image ? image.labels[0].textContent : "—";
    document.getElementById("sum-hostname").textContent = hostname.value.trim().toLowerCase() || "—";
    if (!plan) {
      document.getElementById("sum-plan").textContent = "—";
      price.textContent = "Choose a plan to see its price.";
      after.textContent = "";
      return;
    }
    const p = plan.closest("[data-kind]").dataset;
    document.getElementById("sum-plan").textContent = `${p.name}: ${p.vcpus} vCPU, ${mib(Number(p.memory))}, ${p.disk} GiB disk`;
    price.replaceChildren(
      Object.assign(document.createElement("strong"), { textContent: p.monthly }), " a month, ",
      `${p.hourly} an hour`,
    );
    after.textContent = `After this order: ${quota.instances - 1} instances, ${quota.vcpus - p.vcpus} vCPUs ` +
      `and ${mib(quota.memory - p.memory)} of memory left.`;
  }

  form.addEventListener("change", (e) => {
    if (e.target.name === "kind") showKind(e.target.value);
    if (e.target.name === "access") showAccess();
    summarise();
  });
  hostname.addEventListener("input", () => { checkHostname(false); summarise(); });
  hostname.addEventListener("blur", () => checkHostname(true));

  // One click, one order: the server also refuses a second order from the same form.
  form.addEventListener("submit", (e) => {
    const button = document.getElementById("order-button");
    if (button.disabled) { e.preventDefault(); return; }
    if (!checkHostname(true)) {
      e.preventDefault();
      hostname.focus();
      return;
    }
    button.disabled = true;
    button.textContent = "Ordering…";
  });
  // A page restored from the back/forward cache must not keep a disabled button.
  window.addEventListener("pageshow", () => {
    const button = document.getElementById("order-button");
    button.disabled = false;
    button.textContent = "Order";
  });

  const kind = chosen("kind");
  if (kind) showKind(kind.value);
  showAccess();
  summarise();
  if (hostname.value) checkHostname(true);
})();
