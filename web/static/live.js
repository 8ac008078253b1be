// HiveMind's live parts. Every page works without this script; with it, status panels
// refresh, logs stream in and the submit form shows its price cap as you type.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

  // <div data-refresh="URL">: replace the contents every 2 s; with data-until-final,
  // stop once the task has ended (the fragment no longer offers "Cancel").
  document.querySelectorAll("[data-refresh]").forEach((box) => {
    const tick = async () => {
      try {
        const reply = await fetch(box.dataset.refresh, { credentials: "same-origin" });
        // A redirect means the session ended: reload, so the login page shows (not in here).
        if (reply.redirected) { window.location.reload(); return; }
        if (reply.ok) box.innerHTML = await reply.text();
      } catch (e) { /* the hub is restarting or the network blipped: try again */ }
      if (box.dataset.untilFinal && !box.querySelector("#cancel-task")) return;
      setTimeout(tick, 2000);
    };
    setTimeout(tick, 2000);
  });

  // <pre data-logs="URL">: append new log entries until the task has ended.
  const logs = document.querySelector("pre[data-logs]");
  if (logs) {
    let next = "";
    logs.textContent = "";
    const poll = async () => {
      let done = false;
      try {
        const reply = await fetch(`${logs.dataset.logs}?after=${encodeURIComponent(next)}`,
                                  { credentials: "same-origin" });
        if (reply.status === 401) return;  // logged out elsewhere: stop asking
        if (reply.ok) {
          const body = await reply.json();
          const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
          for (const entry of body.entries) {
            const text = entry.stream === "system" ? `--- ${entry.data}\n` : entry.data;
            const span = document.createElement("span");
            span.className = entry.stream;
            span.textContent = text;
            logs.appendChild(span);
          }
          if (atBottom) logs.scrollTop = logs.scrollHeight;
          next = body.next;
          done = body.done;
        }
      } catch (e) { /* retry */ }
      if (!done) setTimeout(poll, 1000);
      else logs.dataset.done = "true";
    };
    poll();
  }

  // The submit form: ask the API what will be held in escrow for these fields.
  const form = document.querySelector("form[data-quote]");
  const shown = document.getElementById("price-cap");
  if (form && shown) {
    let timer = 0;
    const quote = async () => {
      const body = {};
      for (const [name, value] of new FormData(form).entries()) {
        if (typeof value !== "string" || !value.trim() || ["csrf_token", "action", "command"].includes(name)) continue;
        body[name] = ["gpus", "timeout"].includes(name) ? Number(value) : value.trim();
      }
      try {
        const reply = await fetch(form.dataset.quote, {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
          body: JSON.stringify(body),
        });
        const answer = await reply.json();
        shown.textContent = reply.ok ? `${answer.price_cap} CPT` : answer.error.message;
        shown.classList.toggle("error-text", !reply.ok);
      } catch (e) { /* keep the last figure */ }
    };
    form.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(quote, 250); });
  }
})();
