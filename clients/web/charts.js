// Charts for the operator's console: bar charts drawn as inline SVG with DOM calls (the pages'
// CSP allows no chart library and no inline styles), each followed by its data as a table, so
// that a screen-reader user gets the same figures as a sighted one.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 480;
const HEIGHT = 240;
const LEFT = 48;
const BOTTOM = 36;
const TOP = 12;

let figureCount = 0;
let tableCount = 0;

function svgNode(name, attributes = {}, text = "") {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text) node.textContent = text;
  return node;
}

// A round number at or above ``max`` for the top of the axis (1, 2 or 5 times a power of ten).
function niceMax(max) {
  if (!(max > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= max) return step * power;
  }
  return 10 * power;
}

const format = (value) => (Number.isInteger(value) ? String(value) : value.toFixed(1));

// A table with a caption, column headers (scope col) and one row header (scope row) a line.
export function dataTable(caption, columns, rows) {
  const table = document.createElement("table");
  tableCount += 1;
  table.createCaption().textContent = caption;
  table.caption.id = `table-${tableCount}`;
  const head = table.createTHead().insertRow();
  for (const title of columns) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = title;
    head.append(th);
  }
  const body = table.createTBody();
  for (const [label, ...cells] of rows) {
    const row = body.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = label;
    row.append(th);
    for (const cell of cells) row.insertCell().textContent = cell ?? "";
  }
  const wrap = document.createElement("div");
  wrap.className = "table-wrap";
  wrap.append(table);
  return wrap;
}

// A vertical bar chart: one group of bars per category, one bar per series (told apart by
// colour, by order and by the legend; the figures themselves are in the table after it).
//   categories: ["Nov 26", ...]; series: [{name, className, values: [number|null, ...]}]
//   table: {caption, columns, rows} for dataTable
export function barChart({ title, summary, categories, series, unit = "", max = null, table }) {
  figureCount += 1;
  const captionId = `figure-${figureCount}`;
  const figure = document.createElement("figure");
  figure.className = "chart";
  const caption = document.createElement("figcaption");
  caption.id = captionId;
  caption.textContent = title;
  figure.append(caption);

  if (series.length > 1) {
    const legend = document.createElement("ul");
    legend.className = "legend";
    legend.setAttribute("aria-hidden", "true"); // the table says which figure is which
    for (const s of series) {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = `swatch ${s.className}`;
      item.append(swatch, s.name);
      legend.append(item);
    }
    figure.append(legend);
  }

  const values = series.flatMap((s) => s.values).filter((v) => typeof v === "number");
  const top = max ?? niceMax(Math.max(0, ...values));
  const svg = svgNode("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    "aria-label": `${title}. ${summary} The figures are in the table after the chart.`,
  });
  const plotWidth = WIDTH - LEFT - 8;
  const plotHeight = HEIGHT - TOP - BOTTOM;
  const y = (v) => TOP + plotHeight - (plotHeight * v) / top;
  for (const tick of [0, top / 2, top]) {
    svg.append(svgNode("line", { x1: LEFT, x2: WIDTH - 8, y1: y(tick), y2: y(tick), class: "grid" }));
    svg.append(
      svgNode("text", { x: LEFT - 6, y: y(tick) + 4, "text-anchor": "end", class: "tick" }, `${format(tick)}${unit}`),
    );
  }
  const group = plotWidth / Math.max(1, categories.length);
  const barWidth = Math.min(28, (group * 0.8) / series.length);
  // With many categories, label only every n-th one so that the labels do not overlap
  // (about 8 units of the view box a character at this font size).
  const longest = Math.max(1, ...categories.map((c) => String(c).length));
  const labelEvery = Math.max(1, Math.ceil((categories.length * (longest + 1) * 8) / plotWidth));
  categories.forEach((category, i) => {
    const start = LEFT + i * group + (group - barWidth * series.length) / 2;
    series.forEach((s, j) => {
      const value = s.values[i];
      if (typeof value !== "number") return;
      const bar = svgNode("rect", {
        x: start + j * barWidth,
        y: y(Math.min(value, top)),
        width: Math.max(1, barWidth - 2),
        height: Math.max(0, y(0) - y(Math.min(value, top))),
        class: `bar ${s.className}`,
      });
      bar.append(svgNode("title", {}, `${category}, ${s.name}: ${format(value)}${unit}`));
      svg.append(bar);
    });
    if (i % labelEvery === 0) {
      svg.append(
        svgNode("text", { x: LEFT + i * group + group / 2, y: HEIGHT - BOTTOM + 18, "text-anchor": "middle", class: "tick" }, category),
      );
    }
  });
  svg.append(svgNode("line", { x1: LEFT, x2: WIDTH - 8, y1: y(0), y2: y(0), class: "axis" }));
  figure.append(svg);
  figure.append(dataTable(table.caption, table.columns, table.rows));
  return figure;
}

// A table wider than its box scrolls sideways; keyboard users must be able to scroll it too, so
// such a box becomes a focusable region named by its table's caption (and stops being one when
// it fits again). Run after each change of the page and each resize.
export function markScrollable(root = document) {
  for (const wrap of root.querySelectorAll(".table-wrap")) {
    const caption = wrap.querySelector("caption");
    if (wrap.scrollWidth > wrap.clientWidth + 1) {
      wrap.tabIndex = 0;
      wrap.setAttribute("role", "region");
      if (caption && caption.id) wrap.setAttribute("aria-labelledby", caption.id);
    } else if (wrap.hasAttribute("role")) {
      wrap.removeAttribute("tabindex");
      wrap.removeAttribute("role");
      wrap.removeAttribute("aria-labelledby");
    }
  }
}
