// Keyboard navigation of the review page: j/k or the arrow keys move between verdicts,
// Enter opens one, n marks it normal and a anomalous. The page works without this script.
(function () {
  "use strict";
  function rows() { return Array.prototype.slice.call(document.querySelectorAll('[data-testid="verdict"]')); }
  function typing(target) {
    var tag = target && target.tagName;
    return tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || (target && target.isContentEditable);
  }
  function current(list) {
    var active = document.activeElement;
    for (var i = 0; i < list.length; i++) { if (list[i] === active || list[i].contains(active)) return i; }
    return -1;
  }
  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey || typing(event.target)) return;
    var list = rows();
    if (!list.length) return;
    var i = current(list);
    var key = event.key;
    if (key === "j" || key === "ArrowDown") {
      list[Math.min(i + 1, list.length - 1)].focus();
      event.preventDefault();
    } else if (key === "k" || key === "ArrowUp") {
      list[Math.max(i - 1, 0)].focus();
      event.preventDefault();
    } else if (i >= 0 && (key === "n" || key === "a")) {
      var which = key === "n" ? "mark-normal" : "mark-anomalous";
      var button = list[i].querySelector('[data-testid="' + which + '"]');
      if (button) { button.click(); event.preventDefault(); }
    } else if (i >= 0 && key === "Enter" && list[i] === document.activeElement) {
      var open = list[i].querySelector('[data-testid="open"]');
      if (open) { open.click(); event.preventDefault(); }
    }
  });
})();
