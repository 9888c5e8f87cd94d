// Apply a choice as soon as it is made (the Apply button does the same without script).
document.querySelectorAll("form.controls select").forEach(function (select) {
  select.addEventListener("change", function () { select.form.submit(); });
});
