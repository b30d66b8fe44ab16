// tests/test_slides.py: go to every slide of the open deck and measure how far its content runs off the viewport.
// Calls back with one [h, v, overflow px, bottom, right] per slide.
var done = arguments[arguments.length - 1];
require(["lib/reveal.js/dist/reveal.js"], function (Reveal) {
  // no transition: a slide is in its final place as soon as reveal.js has shown it
  Reveal.configure({ transition: "none", backgroundTransition: "none" });
  Reveal.layout();
  var settle = function (cb) { MathJax.Hub.Queue(cb); };  // after the re-render reveal.js queues on slidechanged
  // union of the rects of the slide and all it holds, plus what scrolls inside a clipped box (pre, table)
  var box = function (section) {
    var r = { top: Infinity, left: Infinity, bottom: -Infinity, right: -Infinity };
    [section].concat(Array.from(section.querySelectorAll("*"))).forEach(function (el) {
      var b = el.getBoundingClientRect();
      if (b.width === 0 && b.height === 0) return;
      if (el.closest(".MJX_Assistive_MathML")) return;  // MathJax's copy for screen readers, clipped to 1px
      var extraX = Math.max(0, el.scrollWidth - el.clientWidth), extraY = Math.max(0, el.scrollHeight - el.clientHeight);
      var style = getComputedStyle(el);
      if (style.overflowX === "visible") extraX = 0;  // visible overflow shows up in the children's rects
      if (style.overflowY === "visible") extraY = 0;
      r.top = Math.min(r.top, b.top); r.left = Math.min(r.left, b.left);
      r.bottom = Math.max(r.bottom, b.bottom + extraY); r.right = Math.max(r.right, b.right + extraX);
    });
    return r;
  };
  var leaves = [];
  Reveal.getHorizontalSlides().forEach(function (hs, h) {
    var vs = hs.querySelectorAll(":scope > section");
    if (!vs.length) leaves.push([h, 0]);
    for (var v = 0; v < vs.length; v++) leaves.push([h, v]);
  });
  var out = [];
  var step = function (i) {
    if (i >= leaves.length) { Reveal.slide(0, 0); done(out); return; }
    Reveal.slide(leaves[i][0], leaves[i][1]);
    settle(function () {
      var s = Reveal.getCurrentSlide(), r = box(s);
      var vw = window.innerWidth, vh = window.innerHeight;
      var over = Math.max(0, r.bottom - vh, r.right - vw, -r.top, -r.left);
      out.push([leaves[i][0], leaves[i][1], Math.round(over), Math.round(r.bottom), Math.round(r.right)]);
      step(i + 1);
    });
  };
  step(0);
});
