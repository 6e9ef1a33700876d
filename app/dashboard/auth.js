// fitserve dashboard, where keys are required: a page the server sends without a key is the
// sign-in form. The key is kept in this tab's sessionStorage (never a cookie, never sent unless
// this script sends it) and the page is fetched again with 'Authorization: Bearer <key>'; the
// answer replaces the document. Every other request the pages make (the event stream, the
// predict form) goes through fitserveAuth.headers().
(function () {
  "use strict";
  var STORAGE = "fitserve.apiKey";

  function key() {
    try { return window.sessionStorage.getItem(STORAGE); } catch (e) { return null; }
  }

  function headers(extra) {
    var out = {};
    for (var name in (extra || {})) out[name] = extra[name];
    var secret = key();
    if (secret) out.Authorization = "Bearer " + secret;
    return out;
  }

  function signOut() {
    window.sessionStorage.removeItem(STORAGE);
    window.location.reload();
  }

  // Defined in <head>, before any page script asks for headers(); the form and the sign-out
  // link are wired once the body is parsed.
  window.fitserveAuth = {headers: headers, signOut: signOut};
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", wire);
  } else {
    wire();
  }

  function wire() {
    var form = document.getElementById("sign-in");
    if (!form) {
      var link = document.getElementById("sign-out");
      if (link && key()) {
        link.hidden = false;
        link.addEventListener("click", function (event) { event.preventDefault(); signOut(); });
      }
      return;
    }

    var error = document.getElementById("sign-in-error");
    function refused(message) {
      window.sessionStorage.removeItem(STORAGE);
      error.textContent = message;
      form.hidden = false;
      form.elements.key.focus();
    }

    function load() {
      form.hidden = true;
      error.textContent = "";
      fetch(window.location.href, {headers: headers(), credentials: "omit", cache: "no-store"})
        .then(function (response) {
          return response.text().then(function (text) {
            if (response.ok) {
              document.open();
              document.write(text);
              document.close();
              return;
            }
            var detail = response.status + " " + response.statusText;
            try { detail = JSON.parse(text).detail || detail; } catch (e) { /* not JSON */ }
            refused("The server refused that key: " + detail);
          });
        }, function (e) { refused("The server did not answer: " + e); });
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var secret = form.elements.key.value.trim();
      form.elements.key.value = "";
      if (!secret) return;
      window.sessionStorage.setItem(STORAGE, secret);
      load();
    });
    if (key()) load();
  }
})();
