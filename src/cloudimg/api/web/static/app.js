// cloudimg web pages: copy buttons and filtering as you type. The pages work without
// this script (the filter form asks the server); only copying needs it.
"use strict";

function announce(text) {
  const status = document.getElementById("copy-status");
  if (status) {
    status.textContent = "";
    window.setTimeout(() => { status.textContent = text; }, 50);
  }
}

function copyFallback(text) {
  // navigator.clipboard needs a secure context (https or localhost); in a cluster the
  // registry is often plain http, where only a selection and execCommand can copy.
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "visually-hidden";
  document.body.appendChild(area);
  area.select();
  let done = false;
  try { done = document.execCommand("copy"); } catch (_) { done = false; }
  area.remove();
  return done;
}

async function copy(button) {
  const source = document.getElementById(button.dataset.copy);
  if (!source) return;
  const text = source.textContent;
  let done = false;
  if (navigator.clipboard && window.isSecureContext) {
    try { await navigator.clipboard.writeText(text); done = true; } catch (_) { done = false; }
  }
  if (!done) done = copyFallback(text);
  announce(done ? "Copied" : "Could not copy: select the text and copy it");
}

function setUpCopy() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", () => copy(button));
  }
}

function setUpFilter() {
  for (const input of document.querySelectorAll("input[data-filter]")) {
    const rows = document.querySelectorAll(`#${input.dataset.filter} [data-filter-text]`);
    const count = document.getElementById(`${input.dataset.filter}-shown`);
    const apply = () => {
      const wanted = input.value.trim().toLowerCase();
      let shown = 0;
      for (const row of rows) {
        const match = row.dataset.filterText.toLowerCase().includes(wanted);
        row.hidden = !match;
        if (match) shown += 1;
      }
      if (count) count.textContent = `${shown} shown on this page`;
    };
    input.addEventListener("input", apply);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setUpCopy();
  setUpFilter();
});
