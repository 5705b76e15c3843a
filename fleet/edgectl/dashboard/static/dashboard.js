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

  // Put the server's new fragment in place, touching only what differs: a table of 1,000 devices
  // where one row changed gets that row replaced, not the whole table rebuilt.
  function swap(html) {
    const next = document.createElement("template");
    next.innerHTML = html;
    const fresh = Array.from(next.content.children);
    const old = Array.from(main.children);
    if (fresh.length !== old.length) {
      main.replaceChildren(next.content);
      return;
    }
    fresh.forEach(function (node, i) {
      const here = old[i];
      if (node.isEqualNode(here)) return;
      if (node.tagName === "TABLE" && here.tagName === "TABLE" && node.tHead && here.tHead &&
          node.tHead.isEqualNode(here.tHead) && node.tBodies.length === 1 && here.tBodies.length === 1) {
        const rows = node.tBodies[0].rows;
        const body = here.tBodies[0];
        for (let r = 0; r < rows.length; r++) {
          const mine = body.rows[r];
          if (!mine) {
            body.appendChild(rows[r].cloneNode(true));
          } else if (rows[r].dataset.key && rows[r].dataset.key === mine.dataset.key) {
            // the same row but for the age of its last report: only that text
            const ages = rows[r].querySelectorAll(".ago");
            mine.querySelectorAll(".ago").forEach(function (cell, k) {
              if (ages[k] && cell.textContent !== ages[k].textContent) cell.textContent = ages[k].textContent;
            });
          } else if (!rows[r].isEqualNode(mine)) {
            mine.replaceWith(rows[r].cloneNode(true));
          }
        }
        while (body.rows.length > rows.length) body.deleteRow(rows.length);
        return;
      }
      here.replaceWith(node);
    });
  }

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
          swap(await answer.text());
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

  // The search box and the attention box filter at once (the form still works without this script).
  const search = document.getElementById("search");
  if (search && search.form) {
    let timer = null;
    const apply = function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        const params = new URLSearchParams(new FormData(search.form));
        history.replaceState(null, "", "?" + params.toString());
        params.set("fragment", "1");
        main.dataset.fragment = "/?" + params.toString();
        refresh();
      }, 250);
    };
    search.addEventListener("input", apply);
    const attention = document.getElementById("attention");
    if (attention) attention.addEventListener("change", apply);
  }
  listen();
})();
