// nf serve's only script (the Content-Security-Policy allows no inline script).
"use strict";

// a select marked data-autosubmit submits its form when changed (the gallery's subject)
document.querySelectorAll("select[data-autosubmit]").forEach((s) =>
  s.addEventListener("change", () => s.form.submit()));

// the job page: live progress over server-sent events; a reloaded page picks up the job's
// current state, and the page reloads once the job ends (to show the result)
const job = document.getElementById("job");
if (job && job.dataset.live === "1") {
  const es = new EventSource(`/api/jobs/${encodeURIComponent(job.dataset.id)}/events`);
  es.onmessage = (e) => {
    const j = JSON.parse(e.data);
    document.getElementById("state").textContent = j.state;
    document.getElementById("step").textContent = j.step;
    document.getElementById("bar").value = j.step;
    document.getElementById("message").textContent = j.message;
    if (j.state === "done" || j.state === "failed") { es.close(); location.reload(); }
  };
}
