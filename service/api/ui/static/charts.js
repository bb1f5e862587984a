// The job page's two charts, drawn as plain SVG (no plotting library, nothing fetched).
//
// drawTradeoff: accuracy against latency for every measured trial, the Pareto front
// highlighted (and its accuracy-latency staircase), the best plan ringed, the baseline marked.
// drawChannels: per prunable group, the baseline channels behind the channels the best plan
// keeps; groups inside dropped residual blocks are marked as dropped.

const SVG_NS = "http://www.w3.org/2000/svg";
const WIDTH = 560;

function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined) element.setAttribute(name, String(value));
  }
  element.append(...children);
  return element;
}

function title(text) {
  return svg("title", {}, text);
}

function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

function round(value) {
  return Math.round(value * 10) / 10;
}

// About `count` round tick values covering [low, high].
export function niceTicks(low, high, count = 5) {
  if (!(high > low)) return [low];
  const raw = (high - low) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const ticks = [];
  for (let tick = Math.ceil(low / step) * step; tick <= high + step * 1e-9; tick += step) {
    ticks.push(Number(tick.toPrecision(12)));
  }
  return ticks;
}

function scale(domainLow, domainHigh, rangeLow, rangeHigh) {
  const span = domainHigh - domainLow || 1;
  return (value) => rangeLow + ((value - domainLow) / span) * (rangeHigh - rangeLow);
}

function tickLabel(value) {
  return Math.abs(value) >= 100 || Number.isInteger(value) ? String(value)
    : String(Number(value.toPrecision(3)));
}

function emptyChart(height, text) {
  return svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, class: "chart-svg empty" },
    svg("text", { x: WIDTH / 2, y: height / 2, "text-anchor": "middle", class: "chart-empty" },
      text));
}

function trialTooltip(trial, onFront) {
  const parts = [`trial ${trial.number}`, `accuracy ${(100 * trial.accuracy).toFixed(2)}%`,
    `latency ${trial.latency_ms.toFixed(3)} ms`];
  if (isNumber(trial.memory_mb)) parts.push(`memory ${trial.memory_mb.toFixed(2)} MB`);
  if (isNumber(trial.flops)) parts.push(`${(trial.flops / 1e6).toPrecision(3)}M MACs`);
  parts.push(trial.feasible ? "feasible" : "infeasible");
  if (trial.fidelity) parts.push(`fidelity ${trial.fidelity}`);
  if (isNumber(trial.rerank_of)) parts.push(`re-ranks trial ${trial.rerank_of}`);
  if (onFront) parts.push("on the Pareto front");
  return parts.join(" · ");
}

// The accuracy-latency staircase through the front: the best accuracy any front plan
// reaches within each latency budget.
function staircase(frontTrials) {
  const steps = [];
  for (const trial of [...frontTrials].sort((a, b) => a.latency_ms - b.latency_ms)) {
    if (!steps.length || trial.accuracy > steps[steps.length - 1].accuracy) steps.push(trial);
  }
  return steps;
}

/**
 * Draw the trials' accuracy against latency into `container`.
 * Returns {points, front}: how many trials were plotted and how many are on the front.
 */
export function drawTradeoff(container, { trials, front, baseline, bestTrial }) {
  const height = 380;
  const margin = { left: 52, right: 16, top: 16, bottom: 46 };
  const measured = trials.filter((t) => isNumber(t.accuracy) && isNumber(t.latency_ms));
  if (!measured.length) {
    container.replaceChildren(emptyChart(height, "no measured trials yet"));
    return { points: 0, front: 0 };
  }
  const frontNumbers = new Set(front.map((t) => t.number));
  const latencies = measured.map((t) => t.latency_ms);
  const accuracies = measured.map((t) => 100 * t.accuracy);
  const hasBaseline = baseline && isNumber(baseline.latency_ms) && isNumber(baseline.accuracy);
  if (hasBaseline) {
    latencies.push(baseline.latency_ms);
    accuracies.push(100 * baseline.accuracy);
  }
  const xSpan = Math.max(...latencies) - Math.min(...latencies) || Math.max(...latencies) || 1;
  const xLow = Math.max(0, Math.min(...latencies) - 0.08 * xSpan);
  const xHigh = Math.max(...latencies) + 0.08 * xSpan;
  const yLowRaw = Math.min(...accuracies);
  const yHighRaw = Math.max(...accuracies);
  const yPad = Math.max((yHighRaw - yLowRaw) * 0.08, 0.5);
  const yLow = Math.max(0, yLowRaw - yPad);
  const yHigh = Math.min(100, yHighRaw + yPad);
  const x = scale(xLow, xHigh, margin.left, WIDTH - margin.right);
  const y = scale(yLow, yHigh, height - margin.bottom, margin.top);

  const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, class: "chart-svg tradeoff",
    role: "img", "aria-label": "accuracy against latency of every trial" });
  const grid = svg("g", { class: "grid" });
  for (const tick of niceTicks(xLow, xHigh, 6)) {
    grid.append(svg("line", { x1: round(x(tick)), x2: round(x(tick)), y1: margin.top,
      y2: height - margin.bottom }),
    svg("text", { x: round(x(tick)), y: height - margin.bottom + 16, "text-anchor": "middle",
      class: "tick" }, tickLabel(tick)));
  }
  for (const tick of niceTicks(yLow, yHigh, 5)) {
    grid.append(svg("line", { x1: margin.left, x2: WIDTH - margin.right, y1: round(y(tick)),
      y2: round(y(tick)) }),
    svg("text", { x: margin.left - 6, y: round(y(tick)) + 4, "text-anchor": "end",
      class: "tick" }, tickLabel(tick)));
  }
  grid.append(
    svg("text", { x: (margin.left + WIDTH - margin.right) / 2, y: height - 8,
      "text-anchor": "middle", class: "axis-title" }, "latency per batch (ms, median)"),
    svg("text", { x: 14, y: (margin.top + height - margin.bottom) / 2, "text-anchor": "middle",
      class: "axis-title", transform: `rotate(-90 14 ${(margin.top + height - margin.bottom) / 2})` },
    "accuracy (%)"));
  root.append(grid);

  const steps = staircase(measured.filter((t) => frontNumbers.has(t.number)));
  if (steps.length) {
    let path = `M${round(x(steps[0].latency_ms))},${round(y(100 * steps[0].accuracy))}`;
    for (const trial of steps.slice(1)) {
      path += `H${round(x(trial.latency_ms))}V${round(y(100 * trial.accuracy))}`;
    }
    path += `H${WIDTH - margin.right}`;
    root.append(svg("path", { d: path, class: "front-line" }));
  }

  const points = svg("g", { class: "points" });
  // Front points last, so they sit on top of the others.
  const ordered = [...measured].sort((a, b) =>
    Number(frontNumbers.has(a.number)) - Number(frontNumbers.has(b.number)));
  for (const trial of ordered) {
    const onFront = frontNumbers.has(trial.number);
    const kind = onFront ? "front" : trial.feasible ? "feasible" : "infeasible";
    points.append(svg("circle", {
      cx: round(x(trial.latency_ms)), cy: round(y(100 * trial.accuracy)), r: onFront ? 6 : 4,
      class: `point ${kind}`, "data-trial": trial.number,
    }, title(trialTooltip(trial, onFront))));
  }
  root.append(points);

  const best = measured.find((t) => t.number === bestTrial);
  if (best) {
    root.append(svg("circle", { cx: round(x(best.latency_ms)), cy: round(y(100 * best.accuracy)),
      r: 10, class: "best-ring", "data-trial": best.number }, title(`best plan: trial ${best.number}`)));
  }
  if (hasBaseline) {
    const bx = round(x(baseline.latency_ms));
    const by = round(y(100 * baseline.accuracy));
    root.append(svg("g", { class: "baseline-marker" },
      svg("path", { d: `M${bx},${by - 7}L${bx + 7},${by}L${bx},${by + 7}L${bx - 7},${by}Z` },
        title(`unpruned baseline: accuracy ${(100 * baseline.accuracy).toFixed(2)}%, ` +
          `latency ${baseline.latency_ms.toFixed(3)} ms`)),
      svg("text", { x: bx - 10, y: by - 10, "text-anchor": "end", class: "marker-label" },
        "baseline")));
  }
  container.replaceChildren(root);
  return { points: measured.length, front: measured.filter((t) => frontNumbers.has(t.number)).length };
}

function channelRows(groups, plan) {
  const keep = plan.keep || {};
  const dropped = new Set(plan.drop_blocks || []);
  if (groups && groups.length) {
    return groups.map((group) => {
      const isDropped = Boolean(group.block) && dropped.has(group.block);
      return { name: group.name, baseline: group.channels, block: group.block,
        dropped: isDropped, kept: isDropped ? 0 : (keep[group.name] ?? group.channels) };
    });
  }
  // Jobs prepared before the baseline recorded its groups: only the pruned groups are known.
  return Object.entries(keep).map(([name, kept]) => ({ name, baseline: null, block: null,
    dropped: false, kept }));
}

/**
 * Draw channels kept per group into `container`.
 * Returns {rows, kept, baseline, dropped}: group count, channel totals, dropped groups.
 */
export function drawChannels(container, { groups, plan }) {
  if (!plan) {
    container.replaceChildren(emptyChart(120, "no feasible plan yet"));
    return { rows: 0, kept: 0, baseline: 0, dropped: 0 };
  }
  const rows = channelRows(groups, plan);
  if (!rows.length) {
    container.replaceChildren(emptyChart(120, "the best plan keeps every channel"));
    return { rows: 0, kept: 0, baseline: 0, dropped: 0 };
  }
  const rowHeight = 19;
  const top = 26;
  const labelWidth = Math.min(190, 14 + 6.6 * Math.max(...rows.map((r) => r.name.length)));
  const valueWidth = 78;
  const height = top + rows.length * rowHeight + 8;
  const widest = Math.max(...rows.map((r) => r.baseline ?? r.kept), 1);
  const x = scale(0, widest, labelWidth, WIDTH - valueWidth);

  const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, class: "chart-svg channels",
    role: "img", "aria-label": "channels kept per layer, baseline against the best plan" });
  const grid = svg("g", { class: "grid" });
  for (const tick of niceTicks(0, widest, 5)) {
    grid.append(svg("line", { x1: round(x(tick)), x2: round(x(tick)), y1: top - 4,
      y2: height - 8 }),
    svg("text", { x: round(x(tick)), y: top - 10, "text-anchor": "middle", class: "tick" },
      tickLabel(tick)));
  }
  root.append(grid);
  rows.forEach((row, index) => {
    const rowTop = top + index * rowHeight;
    const barY = rowTop + 4;
    const g = svg("g", { class: row.dropped ? "layer dropped" : "layer", "data-group": row.name,
      "data-kept": row.kept, "data-baseline": row.baseline ?? "" });
    g.append(svg("text", { x: labelWidth - 8, y: rowTop + 14, "text-anchor": "end",
      class: "layer-name" }, row.name));
    if (row.baseline !== null) {
      g.append(svg("rect", { x: labelWidth, y: barY, height: 11,
        width: round(x(row.baseline) - labelWidth),
        class: row.dropped ? "bar-dropped" : "bar-baseline" }));
    }
    if (row.kept > 0) {
      g.append(svg("rect", { x: labelWidth, y: barY + 2, height: 7,
        width: round(x(row.kept) - labelWidth), class: "bar-kept" }));
    }
    const label = row.dropped ? "dropped"
      : row.baseline !== null ? `${row.kept} / ${row.baseline}` : `${row.kept} kept`;
    g.append(svg("text", { x: WIDTH - valueWidth + 6, y: rowTop + 14,
      class: row.dropped ? "layer-value dropped-label" : "layer-value" }, label));
    g.append(title(row.dropped ? `${row.name}: in dropped block ${row.block}`
      : `${row.name}: keeps ${row.kept}${row.baseline !== null ? ` of ${row.baseline}` : ""} channels`));
    root.append(g);
  });
  container.replaceChildren(root);
  const known = rows.filter((r) => r.baseline !== null);
  return {
    rows: rows.length,
    kept: known.reduce((sum, r) => sum + r.kept, 0),
    baseline: known.reduce((sum, r) => sum + r.baseline, 0),
    dropped: rows.filter((r) => r.dropped).length,
  };
}
