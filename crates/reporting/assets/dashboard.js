// toxaudit dashboard: keeps the server-rendered page live over Server-Sent
// Events (/api/stream). The server sends each section already rendered, so
// this script only swaps html in place, highlights numbers that changed and
// prepends feed lines. Without it the page still shows every number as of
// its load. The sign-in token travels in an http-only cookie, which the
// browser sends with the stream on its own.
(function () {
  "use strict";

  var body = document.body;
  var scope = body.getAttribute("data-scope");
  if (!scope || !window.EventSource) {
    return;
  }
  var connection = document.getElementById("connection");
  var updated = document.getElementById("updated");
  var feed = document.getElementById("feed");
  var FEED_SHOWN = 40;

  function setConnection(state, text) {
    if (!connection) return;
    connection.className = "connection " + state;
    connection.textContent = text;
  }

  function metricsIn(element) {
    var values = {};
    var nodes = element.querySelectorAll("[data-metric]");
    for (var i = 0; i < nodes.length; i++) {
      values[nodes[i].getAttribute("data-metric")] = nodes[i].textContent;
    }
    return values;
  }

  function highlight(element) {
    element.classList.remove("changed");
    // Restart the animation even when the same element changes twice.
    void element.offsetWidth;
    element.classList.add("changed");
  }

  function swap(id, html) {
    var element = document.getElementById(id);
    if (!element || typeof html !== "string" || element.innerHTML === html) return;
    var before = metricsIn(element);
    element.innerHTML = html;
    var nodes = element.querySelectorAll("[data-metric]");
    for (var i = 0; i < nodes.length; i++) {
      var name = nodes[i].getAttribute("data-metric");
      if (Object.prototype.hasOwnProperty.call(before, name) && before[name] !== nodes[i].textContent) {
        highlight(nodes[i]);
      }
    }
  }

  function stamp() {
    if (updated) updated.textContent = "at " + new Date().toLocaleTimeString();
  }

  var source = new EventSource("/api/stream?scope=" + encodeURIComponent(scope));
  source.addEventListener("open", function () {
    setConnection("live", "live");
  });
  source.addEventListener("error", function () {
    // CLOSED: the server refused the stream (an expired token, say); the
    // browser will not retry, so say what to do.
    if (source.readyState === EventSource.CLOSED) {
      setConnection("closed", "not live: reload, or sign in again");
    } else {
      setConnection("reconnecting", "reconnecting…");
    }
  });
  source.addEventListener("report", function (event) {
    var message = JSON.parse(event.data);
    var sections = message.html || {};
    for (var id in sections) {
      if (Object.prototype.hasOwnProperty.call(sections, id)) swap(id, sections[id]);
    }
    body.setAttribute("data-position", String(message.position));
    setConnection("live", "live");
    stamp();
  });
  source.addEventListener("lag", function (event) {
    var message = JSON.parse(event.data);
    swap("lag", message.html);
  });
  source.addEventListener("feed", function (event) {
    if (!feed) return;
    var message = JSON.parse(event.data);
    var sequence = String(message.item.sequence);
    if (feed.querySelector('[data-sequence="' + sequence + '"]')) return;
    feed.insertAdjacentHTML("afterbegin", message.html);
    var added = feed.firstElementChild;
    if (added) added.classList.add("new");
    while (feed.children.length > FEED_SHOWN) feed.removeChild(feed.lastElementChild);
  });
})();
