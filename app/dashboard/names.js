// fitserve dashboard, model names: the buttons and forms that register a model under a name,
// point an alias at a version and remove an alias. Each calls the JSON API
// (/v1/registered-models/...) with the tab's key (fitserveAuth.headers, app/dashboard/auth.js)
// and reloads the page when it succeeds, so what is shown is what the server now holds; a
// refusal shows the API's message. Names and aliases travel in data- attributes and are
// URL-encoded here, never spliced into markup.
(function () {
  "use strict";
  var root = document.getElementById("names-api");
  if (!root) return;
  var api = root.dataset.api;  // ".../v1/registered-models/"
  var error = document.getElementById("names-error");

  function call(method, path, body) {
    error.textContent = "";
    var init = {method: method, credentials: "omit", cache: "no-store",
                headers: window.fitserveAuth.headers(body ? {"Content-Type": "application/json"}
                                                          : {})};
    if (body) init.body = JSON.stringify(body);
    return fetch(api + path, init).then(function (response) {
      if (response.ok) { window.location.reload(); return; }
      var status = response.status + " " + response.statusText;
      return response.json().then(function (answer) {
        error.textContent = answer.detail || status;
      }, function () { error.textContent = status; });
    }, function (e) { error.textContent = "The server did not answer: " + e; });
  }

  function aliasPath(name, alias) {
    return encodeURIComponent(name) + "/aliases/" + encodeURIComponent(alias);
  }

  function moveAlias(name, alias, version) {
    return call("PUT", aliasPath(name, alias), {version: Number(version)});
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (!button) return;
    var data = button.dataset;
    if (data.action === "move-alias") moveAlias(data.name, data.alias, data.version);
    if (data.action === "remove-alias") call("DELETE", aliasPath(data.name, data.alias));
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset.action === "move-alias") {
      event.preventDefault();
      moveAlias(form.dataset.name, form.elements.alias.value.trim(), form.elements.version.value);
    } else if (form.dataset.action === "register") {
      event.preventDefault();
      var name = form.elements.name.value.trim();
      call("POST", encodeURIComponent(name) + "/versions", {model_id: form.dataset.model});
    }
  });
})();
