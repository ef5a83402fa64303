// Relay dashboard: optional niceties only; every page and form works without this script.
(function () {
  "use strict";
  // copy buttons next to DNS records and keys (the text itself stays selectable)
  document.addEventListener("click", function (ev) {
    var button = ev.target.closest("button.copy");
    if (!button) { return; }
    var target = document.getElementById(button.getAttribute("data-copy"));
    if (!target || !navigator.clipboard) { return; }
    navigator.clipboard.writeText(target.textContent.trim()).then(function () {
      var label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    });
  });
  // live parts of a page (the overview): refetch the page and swap the marked element
  var live = document.querySelector("[data-live]");
  if (live && window.fetch && window.DOMParser) {
    var every = Math.max(5, parseInt(live.getAttribute("data-live"), 10) || 30) * 1000;
    setInterval(function () {
      if (document.hidden) { return; }
      fetch(location.href, { credentials: "same-origin" }).then(function (r) {
        return r.ok && !r.redirected ? r.text() : null;
      }).then(function (text) {
        if (!text) { return; }
        var fresh = new DOMParser().parseFromString(text, "text/html").querySelector("[data-live]");
        if (fresh) { live.innerHTML = fresh.innerHTML; }
      }).catch(function () { /* offline: keep what is shown */ });
    }, every);
  }
  // copy buttons only where they can work
  if (navigator.clipboard) {
    document.querySelectorAll("button.copy[hidden]").forEach(function (b) { b.hidden = false; });
  }
})();
