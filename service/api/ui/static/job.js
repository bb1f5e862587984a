// /ui/jobs/{id}: status, phase and progress, polled every few seconds until the job ends;
// the trials chart, the channels chart and the downloads.
import { drawChannels, drawTradeoff } from "./charts.js";
import {
  ApiError, adoptKeyFromUrl, api, clearMessage, download, el, formatBytes, formatCount,
  formatDuration, formatMb, formatMs, formatPercent, formatTime, markRefreshed, poll,
  progressOf, ROOT, setStatusBadge, setUpAuth, showError, showMessage, storedKey, TERMINAL_STATUSES,
} from "./common.js";

const REFRESH_SECONDS = 3;
// What a trial's accuracy measured, cheapest first (core.trial.FIDELITIES).
const FIDELITIES = ["costs", "pruned", "probe", "short", "long"];
const FORMATS = [
  { format: "safetensors", suffix: ".safetensors",
    about: "weights + plan; load with models.export.load_pruned" },
  { format: "onnx", suffix: ".onnx", about: "for ONNX Runtime and other runtimes" },
  { format: "pt2", suffix: ".pt2", about: "torch.export.load, no Topiary needed" },
  { format: "torchscript", suffix: ".pt", about: "torch.jit.load (deprecated); for LibTorch C++" },
];
const jobId = decodeURIComponent(location.pathname.split("/ui/jobs/")[1] || "");
const jobPath = `/v1/jobs/${encodeURIComponent(jobId)}`;
const drawn = { tradeoff: null, channels: null, downloads: null };

function byId(id) {
  return document.getElementById(id);
}

function renderSummary(job) {
  document.title = `Topiary: ${job.name}`;
  byId("crumb-job").textContent = job.name;
  byId("job-name").textContent = job.name;
  setStatusBadge(byId("job-status"), job.status);
  byId("job-id").textContent = job.id;
  byId("job-created").textContent = formatTime(job.created_at);
  const device = job.device_model || job.baseline?.device_description || job.device_type;
  const runtime = job.latency_runtime || "torch";
  byId("job-device").textContent = device
    ? ` · latency timed in ${runtime} on ${device}` : ` · latency timed in ${runtime}`;
  const cancelling = job.cancel_requested && !TERMINAL_STATUSES.has(job.status);
  byId("job-phase").textContent = [job.phase, cancelling ? "(cancel requested)" : null]
    .filter(Boolean).join(" ");
  const waiting = byId("job-waiting");
  waiting.hidden = !job.waiting_for;
  waiting.textContent = job.waiting_for ? `Waiting: ${job.waiting_for}.` : "";
  const progress = progressOf(job);
  const bar = byId("job-progress");
  bar.max = Math.max(progress.total, 1);
  bar.value = progress.done;
  const timing = [];
  if (job.progress?.elapsed_seconds != null) {
    timing.push(`elapsed ${formatDuration(job.progress.elapsed_seconds)}`);
  }
  if (job.progress?.eta_seconds != null && !TERMINAL_STATUSES.has(job.status)) {
    timing.push(`about ${formatDuration(job.progress.eta_seconds)} left`);
  }
  byId("job-progress-label").textContent = [progress.label, ...timing].join(" · ");
  const error = byId("job-error");
  error.hidden = !job.error;
  error.textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
}

function ratio(value, reference) {
  return typeof value === "number" && typeof reference === "number" && reference > 0
    ? `×${(value / reference).toFixed(2)}` : "";
}

// An accuracy's change in points ("+0.12 pts"), or "" when either side is missing.
function pointsChange(value, reference) {
  if (typeof value !== "number" || typeof reference !== "number") return "";
  return `${value >= reference ? "+" : ""}${(100 * (value - reference)).toFixed(2)} pts`;
}

function renderMetrics(job) {
  const rows = [];
  // test accuracy: measured once the delivered model exists, with the unpruned one's
  const cells = (m, test) => [formatPercent(m.accuracy, 2),
    typeof test === "number" ? formatPercent(test, 2) : "", formatMs(m.latency_ms),
    formatMb(m.memory_mb), formatCount(m.flops), formatCount(m.params)];
  if (job.baseline) {
    rows.push(["unpruned baseline", cells(job.baseline, job.best?.baseline_test_accuracy)]);
  }
  if (job.best) {
    const label = job.status === "succeeded" ? `pruned, fine-tuned (trial ${job.best.trial})`
      : `best so far: trial ${job.best.trial}`;
    rows.push([label, cells(job.best, job.best.test_accuracy)]);
    if (job.baseline) {
      const b = job.baseline;
      rows.push(["best against baseline", [pointsChange(job.best.accuracy, b.accuracy),
        pointsChange(job.best.test_accuracy, job.best.baseline_test_accuracy),
        ratio(job.best.latency_ms, b.latency_ms),
        ratio(job.best.memory_mb, b.memory_mb), ratio(job.best.flops, b.flops),
        ratio(job.best.params, b.params)]]);
    }
  }
  const body = document.querySelector("#metrics tbody");
  if (!rows.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "muted" },
      "measured once the worker has prepared the job")));
    return;
  }
  body.replaceChildren(...rows.map(([label, values]) =>
    el("tr", {}, el("th", {}, label), ...values.map((v) => el("td", {}, v)))));
}

const LIMIT_UNITS = {
  latency_ms: (v) => formatMs(v), memory_mb: (v) => formatMb(v), flops: (v) => formatCount(v),
  params: (v) => formatCount(v),
};

function limitValue(limit, value) {
  if (typeof value !== "number") return "";
  return limit.name.endsWith("_ratio") ? `×${value.toFixed(3)}` : LIMIT_UNITS[limit.metric](value);
}

function renderLimits(job) {
  const body = document.querySelector("#limits tbody");
  const delivered = job.status === "succeeded" ? "delivered" : "best so far";
  byId("limits-delivered").textContent = job.status === "failed" && job.best ? "closest" : delivered;
  if (!job.limits.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 4, class: "muted" },
      "this job has no limits")));
    return;
  }
  body.replaceChildren(...job.limits.map((limit) => {
    const verdict = limit.met === null ? "not measured yet"
      : limit.met ? "met" : `missed by ${formatPercent(limit.missed_by)}`;
    return el("tr", { "data-limit": limit.name, class: limit.met === false ? "missed" : "" },
      el("th", {}, limit.name), el("td", {}, limitValue(limit, limit.limit)),
      el("td", {}, limitValue(limit, limit.delivered)), el("td", {}, verdict));
  }));
}

function renderTradeoff(job, trials, front) {
  const key = JSON.stringify([trials.map((t) => [t.number, t.state, t.accuracy, t.latency_ms,
    t.feasible, t.fidelity]), front.map((t) => t.number), job.best?.trial,
    job.baseline?.latency_ms]);
  if (key === drawn.tradeoff) return;
  drawn.tradeoff = key;
  const shown = drawTradeoff(byId("tradeoff-chart"), {
    trials, front, baseline: job.baseline, bestTrial: job.best?.trial,
  });
  const notPlotted = trials.length - shown.points;
  const note = [`${shown.points} trial${shown.points === 1 ? "" : "s"} plotted, ` +
    `${shown.front} on the Pareto front (accuracy, latency, memory)`];
  if (notPlotted > 0) note.push(`${notPlotted} not measured (running, stopped early or failed)`);
  const fidelities = fidelityCounts(trials);
  if (fidelities) note.push(`by fidelity: ${fidelities}`);
  byId("tradeoff-note").textContent = `${note.join("; ")}.`;
}

// "12 probe, 5 short, 2 long": how far each trial's plan was judged (TrialRecord.fidelity).
function fidelityCounts(trials) {
  const counts = new Map(FIDELITIES.map((name) => [name, 0]));
  for (const trial of trials) {
    if (counts.has(trial.fidelity)) counts.set(trial.fidelity, counts.get(trial.fidelity) + 1);
  }
  return [...counts].filter(([, count]) => count > 0)
    .map(([name, count]) => `${count} ${name}`).join(", ");
}

function renderChannels(job) {
  const groups = job.baseline?.groups;
  const plan = job.best?.plan;
  const key = JSON.stringify([groups, plan]);
  if (key === drawn.channels) return;
  drawn.channels = key;
  const shown = drawChannels(byId("channels-chart"), { groups, plan });
  const notes = [];
  if (plan && shown.baseline > 0) {
    notes.push(`keeps ${shown.kept} of ${shown.baseline} channels ` +
      `(${formatPercent(shown.kept / shown.baseline)})`);
  }
  const droppedBlocks = plan?.drop_blocks || [];
  if (plan) {
    const removable = job.baseline?.blocks;
    const of = removable ? ` of ${removable.length} removable` : "";
    notes.push(droppedBlocks.length
      ? `drops ${droppedBlocks.length}${of} block${droppedBlocks.length === 1 ? "" : "s"}: ${droppedBlocks.join(", ")}`
      : `drops no block${removable ? ` (${removable.length} removable)` : ""}`);
  }
  if (plan && !groups) notes.push("this job's baseline has no layer widths: only pruned groups are shown");
  byId("channels-note").textContent = notes.length ? `The best plan ${notes.join("; ")}.` : "";
}

function safeName(name) {
  return name.replace(/[^\w.-]+/g, "_") || jobId;
}

function renderDownloads(job) {
  const key = JSON.stringify([job.artifacts, job.status]);
  if (key === drawn.downloads) return;
  drawn.downloads = key;
  const artifacts = new Map(job.artifacts.map((a) => [a.format, a]));
  byId("downloads").replaceChildren(...FORMATS.map(({ format, suffix, about }) => {
    const artifact = artifacts.get(format);
    if (!artifact) {
      return el("li", { class: "unavailable", "data-format": format },
        el("span", { class: "format" }, format),
        el("span", { class: "muted" }, job.status === "succeeded" ? "not exported"
          : "written when the job succeeds"));
    }
    const filename = `${safeName(job.name)}${suffix}`;
    const link = el("a", { href: ROOT + artifact.url, download: filename, class: "format" },
      format);
    link.addEventListener("click", (event) => {
      if (!storedKey()) return; // no key: the plain link works (TOPIARY_AUTH=none)
      event.preventDefault();
      download(artifact.url, filename).catch(showError);
    });
    return el("li", { "data-format": format }, link,
      el("span", {}, formatBytes(artifact.size)),
      el("code", { class: "sha", title: `sha256 ${artifact.sha256}` },
        `sha256 ${artifact.sha256.slice(0, 12)}…`),
      el("span", { class: "muted" }, about));
  }));
}

async function refresh() {
  let job;
  try {
    const [jobData, trials, front] = await Promise.all([
      api(jobPath), api(`${jobPath}/trials`), api(`${jobPath}/pareto`)]);
    job = jobData;
    byId("job").hidden = false;
    renderSummary(job);
    renderMetrics(job);
    renderLimits(job);
    renderTradeoff(job, trials.data, front.data);
    renderChannels(job);
    renderDownloads(job);
    clearMessage();
    markRefreshed();
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      byId("job").hidden = true;
      showMessage(`No job ${jobId} for this API key. ${error.message}`);
      return false;
    }
    showError(error);
    return true;
  }
  return !TERMINAL_STATUSES.has(job.status);
}

adoptKeyFromUrl();
if (!jobId) {
  showMessage("No job id in the address; pick a job from the list.");
} else {
  const refreshNow = poll(refresh, REFRESH_SECONDS);
  setUpAuth(refreshNow);
}
