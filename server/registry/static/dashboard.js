// Charts of the run page (Chart.js, vendored). Polls /ui/runs/<id>/charts and updates in place.
"use strict";
const PALETTE = ["#2f6fde", "#e0793b", "#2aa876", "#b04ad6", "#d64564", "#1f9fb5", "#8c7a2f", "#5b6b8c"];
const color = (b) => PALETTE[Number(b) % PALETTE.length];

function lineChart(canvas, yTitle) {
  return new Chart(canvas, {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false, maintainAspectRatio: false, parsing: false, normalized: true,
      interaction: { mode: "nearest", intersect: false },
      scales: { x: { type: "linear", title: { display: true, text: "round" }, ticks: { precision: 0 } },
                y: { title: { display: true, text: yTitle } } },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
    },
  });
}

function series(perBlock, numBlocks) {
  const out = [];
  for (let b = 0; b < numBlocks; b++) {
    const pts = perBlock[String(b)] || [];
    if (!pts.length) continue;
    out.push({ label: `block ${b}`, data: pts.map(([x, y]) => ({ x, y })), borderColor: color(b), backgroundColor: color(b),
               pointRadius: 2, borderWidth: 2, tension: 0.15 });
  }
  const model = perBlock.model || [];  // the assembled model after each round (e.g. test accuracy)
  if (model.length) {
    out.push({ label: "assembled model", data: model.map(([x, y]) => ({ x, y })), borderColor: "#222", backgroundColor: "#222",
               pointRadius: 3, borderWidth: 2.5, tension: 0 });
  }
  return out;
}

function dblocksRunCharts(runId) {
  const select = document.getElementById("metric-select");
  const metrics = lineChart(document.getElementById("chart-metrics"), "value");
  const epsilon = lineChart(document.getElementById("chart-epsilon"), "ε record level, composed");
  const nodes = new Chart(document.getElementById("chart-nodes"), {
    type: "bar", data: { labels: [], datasets: [] },
    options: { animation: false, maintainAspectRatio: false, indexAxis: "y",
               scales: { x: { title: { display: true, text: "ε record level, composed over the run" } } },
               plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } } },
  });
  let last = null;
  let picked = null;  // the metric the viewer chose, if any

  function draw(d) {
    const names = Object.keys(d.metrics);
    const preferred = names.find((n) => n === "test_accuracy") || names.find((n) => /loss/.test(n)) || names[0];
    const chosen = picked && names.includes(picked) ? picked : preferred;  // test accuracy once it exists
    if (select.options.length !== names.length || [...select.options].some((o, i) => o.value !== names[i])) {
      select.replaceChildren(...names.map((n) => new Option(n, n)));
    }
    if (chosen) select.value = chosen;
    metrics.data.datasets = chosen ? series(d.metrics[chosen], d.num_blocks) : [];
    metrics.options.scales.y.title.text = chosen || "value";
    metrics.update("none");
    document.getElementById("metrics-empty").hidden = names.length > 0;

    const eps = series(d.record_epsilon, d.num_blocks);
    if (d.target_epsilon != null && eps.length) {
      const xs = eps.flatMap((s) => s.data.map((p) => p.x));
      eps.push({ label: "target ε", data: [{ x: Math.min(...xs), y: d.target_epsilon }, { x: Math.max(...xs), y: d.target_epsilon }],
                 borderColor: "#d64545", borderDash: [6, 4], pointRadius: 0, borderWidth: 1.5 });
    }
    const accountant = d.accountant ? ` (${d.accountant} accountant)` : "";
    epsilon.data.datasets = eps;
    epsilon.options.scales.y.title.text = `ε record level, composed${accountant}`;
    epsilon.update("none");
    document.getElementById("epsilon-empty").hidden = eps.length > 0;

    nodes.data.labels = d.nodes.map((n) => n.node);
    nodes.data.datasets = [{ label: `ε composed over all rounds and blocks${accountant}`, data: d.nodes.map((n) => n.total),
                             backgroundColor: color(0) }];
    nodes.options.scales.x.title.text = `ε record level, composed over the run${accountant}`;
    nodes.update("none");
    document.getElementById("nodes-empty").hidden = d.nodes.length > 0;
    // the same numbers as text (readable without the chart, and searchable): company, epsilon, accountant, round
    const rows = d.nodes.map((n) => {
      const tr = document.createElement("tr");
      for (const [cls, text] of [["company", n.node], ["eps", n.total.toPrecision(3)],
                                 ["small muted", `${n.accountant || "?"}, to round ${n.round}`]]) {
        const td = document.createElement("td");
        td.className = cls;
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    });
    document.getElementById("nodes-table-eps").replaceChildren(...rows);
  }

  async function refresh() {
    try {
      const r = await fetch(`/ui/runs/${runId}/charts`, { headers: { Accept: "application/json" } });
      if (!r.ok) return;
      const text = await r.text();
      if (text !== last) { last = text; draw(JSON.parse(text)); }
    } catch (e) { /* the next poll retries */ }
  }
  select.addEventListener("change", () => { picked = select.value; if (last) draw(JSON.parse(last)); });
  refresh();
  setInterval(refresh, 3000);
}

// The run page loads this file with data-run-id: no inline script, which the Content-Security-Policy refuses.
if (document.currentScript && document.currentScript.dataset.runId) {
  dblocksRunCharts(Number(document.currentScript.dataset.runId));
}
