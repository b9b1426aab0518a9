(function () {
  var box = document.getElementById("hide-passed");
  if (box) {
    box.addEventListener("change", function () { document.body.classList.toggle("hide-passed", box.checked); });
  }
  var all = document.getElementById("expand-all");
  if (all) { all.addEventListener("click", function () {
    var open = all.dataset.open !== "1";
    document.querySelectorAll("#checks details").forEach(function (d) { d.open = open; });
    all.dataset.open = open ? "1" : "0"; all.textContent = open ? "collapse all" : "expand all";
  }); }
  document.documentElement.setAttribute("data-rendered", "true");
})();
