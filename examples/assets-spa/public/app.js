// The page draws the view for whatever path it was loaded at: the edge serves index.html for all of them.
document.getElementById("view").textContent = `view: ${location.pathname}`;
fetch("/api/hello")
  .then((reply) => reply.json())
  .then((body) => { document.getElementById("api").textContent = `${body.message} (${body.colo})`; });
