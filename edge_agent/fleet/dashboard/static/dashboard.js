// edgectl dashboard: live updates without reloading. The server says (server-sent events on
// /events) that the data of this page changed; the page fetches its fragment, rendered and
// escaped by the server, and puts it in place. No data from a device is ever handled here.
"use strict";
(function () {
  const main = document.getElementById("live");
  const status = document.getElementById("live-status");
  if (!main) return;
  let known = JSON.parse(main.dataset.revisions || "{}");
  let busy = false;
  let again = false;

  function changed(revisions) {
    return Object.keys(revisions).some(function (k) { return revisions[k] !== known[k]; });
  }

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      do {
        again = false;
        const answer = await fetch(main.dataset.fragment, { credentials: "same-origin", cache: "no-store" });
        if (answer.ok || answer.status === 404) {
          main.innerHTML = await answer.text();
          main.dataset.updated = String(Date.now());
          document.dispatchEvent(new CustomEvent("dashboard:updated"));
        }
      } while (again);
    } finally {
      busy = false;
    }
  }

  function listen() {
    const source = new EventSource("/events?watch=" + encodeURIComponent(main.dataset.watch || "fleet"));
    source.addEventListener("open", function () { status.textContent = "live"; status.className = "live on"; });
    source.addEventListener("error", function () { status.textContent = "reconnecting…"; status.className = "live off"; });
    source.addEventListener("change", function (event) {
      const revisions = JSON.parse(event.data);
      if (changed(revisions)) {
        known = Object.assign({}, known, revisions);
        refresh();
      }
    });
  }

  // The search box filters as one types (the form still works without this script).
  const search = document.getElementById("search");
  if (search && search.form) {
    let timer = null;
    search.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        const params = new URLSearchParams(new FormData(search.form));
        history.replaceState(null, "", "?" + params.toString());
        params.set("fragment", "1");
        main.dataset.fragment = "/?" + params.toString();
        refresh();
      }, 250);
    });
  }
  listen();
})();
