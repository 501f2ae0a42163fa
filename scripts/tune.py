"""`make tune`: search the serving knobs for this host, and hand ops the winner as a patch.

A candidate is the committed configs with some knobs changed (instances, queue delays, preferred batch
sizes, DALI threads, ONNX Runtime threads). It is tried on a running server without a restart: the
server runs in explicit model control, and each changed model is reloaded with its config as an
override (the repository load API), derived for the served flavor as the build derives it; the same
code tunes `make serve`'s local server and the GPU box's (`--url`, `--flavor gpu`). Each candidate is
measured with the benchmarks' closed loop at several client concurrencies on camera-sized JPEGs; its
score is the best throughput whose p99 latency is within the budget.

The search is coordinate descent: from the measured baseline, one knob at a time, each of its values
with the others at their best so far; a value wins only if it beats the best by more than the noise
(the spread of repeated baseline runs). Passes repeat until one changes nothing, or the point budget
is spent. The winner and the committed values are then measured alternately, and the winner stands only
if it wins every round. It is written as a unified diff of model_repository/*/config.pbtxt whose values
are edited in place (config_text: ops' comments and layout kept), validated before it is written.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from scripts.config import Bundle, ConfigError, ModelConfig
from scripts.config_text import Edits, edit_in_place, unified_diff
from scripts.constants import CPU_ONLY_FLAVORS, FLAVORS, GPU, LOCAL, ORT_THREADS
from scripts.live import LiveServer
from scripts.repository import flavor_config
from scripts.validate import check_edits

# p99 at concurrency 1 is the service time without queueing. Under a closed loop of a few clients, a
# well-batched server adds about one batch's service time of queueing, and the tail of a shared 2-core
# machine doubles that again: 5x leaves room for batching while keeping latency within the same order
# (3x left the baseline itself over budget in half the runs here).
BUDGET_FACTOR = 5.0
CONCURRENCIES = (2, 4, 8, 16)
MIN_GAIN = 0.03  # a candidate must beat the best by this share (and by the measured spread) to win
# The winner and the committed values are measured alternately this many times (at least) before the winner
# is recommended: three wins in a row by chance alone happen one time in eight.
CONFIRM_ROUNDS = 3


@dataclasses.dataclass(frozen=True)
class Knob:
    name: str  # "<role>.<what>", role: check, preprocess or classifier
    values: tuple
    apply: Callable[[ModelConfig, object], None]
    flavors: tuple[str, ...] = FLAVORS  # where the served backend takes it

    @property
    def role(self) -> str:
        return self.name.split(".")[0]


def _instances(config: ModelConfig, value) -> None:
    config.instance_group[0].count = int(value)


def _queue_delay(config: ModelConfig, value) -> None:
    config.dynamic_batching.max_queue_delay_microseconds = int(value)


def _preferred(config: ModelConfig, value) -> None:
    config.dynamic_batching.preferred_batch_size[:] = list(value)


def _parameter(key: str) -> Callable[[ModelConfig, object], None]:
    def apply(config: ModelConfig, value) -> None:
        config.parameters[key].string_value = str(value)
    return apply


# Every knob changes on a live server: the DALI backend and the local flavor's python model both read
# num_threads from the config they are loaded with. Not knobs: the instance kind (TensorRT and DALI's
# mixed decoder need GPU instances, the cpu and local flavors have none) and ONNX Runtime's inter-op
# threads (used only by its parallel execution mode, which neither ORT flavor turns on).
KNOBS = (
    Knob("classifier.instances", (1, 2, 3), _instances),
    Knob("classifier.max_queue_delay_us", (0, 100, 1000, 4000), _queue_delay),
    # 0: the host's cores shared among the instances (repository._shared_cores)
    Knob("classifier.intra_op_threads", (0, 1, 2), _parameter(ORT_THREADS), CPU_ONLY_FLAVORS),
    Knob("classifier.preferred_batch_size", ((), (4,), (8,)), _preferred),
    Knob("preprocess.instances", (1, 2), _instances),
    # The cpu flavor's DALI step runs one request per execution (repository._unbatched_dali): no queue delay.
    Knob("preprocess.max_queue_delay_us", (0, 100, 1000), _queue_delay, (GPU, LOCAL)),
    Knob("preprocess.preferred_batch_size", ((), (4,), (8,)), _preferred, (GPU, LOCAL)),
    Knob("preprocess.num_threads", (1, 2, 4), _parameter("num_threads")),
    Knob("check.instances", (1, 2, 3), _instances),
    Knob("check.max_queue_delay_us", (0, 100), _queue_delay),
)


def knobs_for(flavor: str, bundle: Bundle) -> tuple[Knob, ...]:
    return tuple(knob for knob in KNOBS if flavor in knob.flavors and model_of(bundle, knob.role))


def model_of(bundle: Bundle, role: str) -> str | None:
    """The model of a step: preprocess, classifier, check (None: a bundle without the image check)."""
    return {"classifier": bundle.classifier.model_name, "preprocess": bundle.preprocess.model_name,
            "check": bundle.check.model_name if bundle.check else None}[role]


def candidate_configs(bundle: Bundle, candidate: dict[str, object], knobs: Sequence[Knob] = KNOBS) -> dict[str, ModelConfig]:
    """The committed configs of the models `candidate` changes, with its values."""
    by_name = {knob.name: knob for knob in knobs}
    configs: dict[str, ModelConfig] = {}
    for name, value in candidate.items():
        model = model_of(bundle, by_name[name].role)
        if model not in configs:
            configs[model] = ModelConfig()
            configs[model].CopyFrom(bundle.configs[model])
        by_name[name].apply(configs[model], value)
    return configs


def patch(bundle: Bundle, candidate: dict[str, object], knobs: Sequence[Knob] = KNOBS) -> Edits:
    """The committed configs the candidate changes, its values edited in place; validated (on a copy)."""
    changes: Edits = {}
    for model, config in candidate_configs(bundle, candidate, knobs).items():
        path = bundle.config_path(model)
        before = path.read_text()
        after = edit_in_place(before, config)
        if after != before:
            changes[path] = (before, after)
    try:
        check_edits(bundle.root, {path: after for path, (_, after) in changes.items()})
    except ConfigError as exc:
        raise ConfigError(exc.path, f"the tuned configs do not validate: {exc}") from None
    return changes


# -- measuring -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Point:
    """One candidate at one concurrency."""

    candidate: dict
    concurrency: int
    images_per_s: float
    p99_ms: float
    failures: int


@dataclasses.dataclass(frozen=True)
class Score:
    images_per_s: float  # the best within the budget (0: none within it)
    p99_ms: float
    concurrency: int
    points: tuple[Point, ...]


def score(points: Sequence[Point], budget_ms: float) -> Score:
    """The best rate within the p99 budget. Where the next concurrency goes over the budget at a higher rate,
    the rate at the budget itself, interpolated linearly in p99 between the two: otherwise a p99 landing just
    over or just under the budget would move the score by a whole concurrency step, and runs of one
    configuration would differ by more than configurations do."""
    clean = [p for p in points if p.failures == 0]
    best = max((p for p in clean if p.p99_ms <= budget_ms), key=lambda p: p.images_per_s, default=None)
    if best is None:
        return Score(0.0, min(p.p99_ms for p in points), 0, tuple(points))
    above = [p for p in clean if p.concurrency > best.concurrency and p.p99_ms > budget_ms and p.images_per_s > best.images_per_s]
    if not above:
        return Score(best.images_per_s, best.p99_ms, best.concurrency, tuple(points))
    over = min(above, key=lambda p: p.concurrency)
    share = (budget_ms - best.p99_ms) / (over.p99_ms - best.p99_ms)
    return Score(best.images_per_s + share * (over.images_per_s - best.images_per_s), budget_ms, best.concurrency,
                 tuple(points))


def mean_score(scores: Sequence[Score]) -> Score:
    """Repeated runs of one configuration as one score: the mean rate and p99, every point."""
    return Score(statistics.fmean(s.images_per_s for s in scores), statistics.fmean(s.p99_ms for s in scores),
                 scores[0].concurrency, tuple(p for s in scores for p in s.points))


def beats(result: Score, best: Score, noise: float) -> bool:
    """Whether `result` is better than `best` by more than the measurement noise (and MIN_GAIN)."""
    return result.images_per_s - best.images_per_s > max(MIN_GAIN * best.images_per_s, noise)


def confirm(measure: Callable[[dict], Score], baseline: dict, best: dict, rounds: int,
            progress: Callable[[str], None] = print) -> tuple[list[Score], list[Score]]:
    """The committed values and the winner measured alternately, `rounds` times each: the machine's slow
    swings (another tenant, thermal limits) then hit both alike, which a single run of each cannot promise."""
    base_runs, best_runs = [], []
    for round_ in range(rounds):
        base_runs.append(measure(dict(baseline)))
        best_runs.append(measure(dict(best)))
        progress(f"  round {round_ + 1}/{rounds}: committed {base_runs[-1].images_per_s:.1f}, "
                 f"winner {best_runs[-1].images_per_s:.1f} img/s")
    return base_runs, best_runs


def confirmed(base_runs: Sequence[Score], best_runs: Sequence[Score]) -> bool:
    """The winner beat the committed values in every round, and on average by MIN_GAIN."""
    every_round = all(b.images_per_s > a.images_per_s for a, b in zip(base_runs, best_runs, strict=True))
    mean_base = statistics.fmean(a.images_per_s for a in base_runs)
    return every_round and statistics.fmean(b.images_per_s for b in best_runs) > (1 + MIN_GAIN) * mean_base


def search(knobs: Sequence[Knob], baseline: dict[str, object], measure: Callable[[dict], Score], noise: float,
           max_points: int, progress: Callable[[str], None] = print, baseline_score: Score | None = None,
           served: Callable[[dict], object] = lambda candidate: sorted(candidate.items()),
           ) -> tuple[dict, Score, list[tuple[dict, Score]]]:
    """Coordinate descent from `baseline` (measured first unless its score is given); (best candidate, its
    score, every candidate tried with its score). A candidate whose `served` configs (comparable) equal
    those of one already tried is skipped: measuring it again would spend a point on an A/A test."""
    best, best_score = dict(baseline), baseline_score or measure(dict(baseline))
    tried: list[tuple[dict, Score]] = [(dict(best), best_score)]
    seen = [served(best)]
    progress(f"baseline: {best_score.images_per_s:.1f} img/s, p99 {best_score.p99_ms:.1f} ms")
    improved = True
    while improved and len(tried) < max_points:
        improved = False
        for knob in knobs:
            for value in knob.values:
                if value == best.get(knob.name) or len(tried) >= max_points:
                    continue
                candidate = {**best, knob.name: value}
                configs = served(candidate)
                if configs in seen:
                    progress(f"  {knob.name}={value}: serves what a candidate already tried serves, skipped")
                    continue
                seen.append(configs)
                result = measure(candidate)
                tried.append((candidate, result))
                won = beats(result, best_score, noise)
                progress(f"  {knob.name}={value}: {result.images_per_s:.1f} img/s, p99 {result.p99_ms:.1f} ms"
                         + ("  <- best" if won else ""))
                if won:
                    best, best_score, improved = candidate, result, True
    return best, best_score, tried


def current_values(bundle: Bundle, knobs: Sequence[Knob]) -> dict[str, object]:
    """What the committed configs set for each knob (the baseline)."""
    values: dict[str, object] = {}
    for knob in knobs:
        config = bundle.configs[model_of(bundle, knob.role)]
        probe = ModelConfig()
        for value in knob.values:
            probe.CopyFrom(config)
            knob.apply(probe, value)
            if probe == config:
                values[knob.name] = value
                break
        else:  # a value the knob does not list: keep it as it is by not touching the knob
            continue
    return values


class Candidates:
    """Candidates loaded on a running server in explicit model control (`live.LiveServer`: its admin API)."""

    def __init__(self, server: LiveServer, bundle: Bundle, flavor: str = LOCAL):
        self.server, self.bundle, self.flavor = server, bundle, flavor
        self.loaded: dict[str, dict] = {}

    def load(self, candidate: dict[str, object]) -> None:
        self._load(candidate_configs(self.bundle, candidate))

    def served(self, candidate: dict[str, object]) -> dict[str, dict]:
        """What the server would be given for each model the candidate changes: on a host whose share of
        cores is one thread per instance, ONNX Runtime's 0 and 1 are the same configs."""
        return {model: self._served(model, config) for model, config in candidate_configs(self.bundle, candidate).items()}

    def restore(self) -> None:
        """Every model a candidate changed, back to its committed config."""
        self._load({model: self.bundle.configs[model] for model in self.loaded})

    def _served(self, model: str, config: ModelConfig) -> dict:
        from google.protobuf import json_format

        # The gpu flavor serves the committed configs themselves; the others, what the build derives.
        derived = config if self.flavor == GPU else flavor_config(self.bundle.with_config(model, config), model, self.flavor)
        return json_format.MessageToDict(derived, preserving_proto_field_name=True)

    def _load(self, configs: dict[str, ModelConfig]) -> None:
        for model, config in configs.items():
            served = self._served(model, config)
            if self.loaded.get(model) != served:
                self.server.load(model, served)
                self.loaded[model] = served
        deadline = time.monotonic() + 120
        while self.server.index().get(self.bundle.ensemble.name) != "READY":
            if time.monotonic() > deadline:
                raise RuntimeError("the ensemble is not ready after loading the candidate")
            time.sleep(0.2)


def spread(values: Sequence[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def write_report(tried: list[tuple[dict, Score]], budget_ms: float, output: Path) -> tuple[Path, Path]:
    """A CSV of every point, and a PNG of throughput against p99 with the frontier marked."""
    output.mkdir(parents=True, exist_ok=True)
    rows = [(json.dumps(candidate, sort_keys=True), p.concurrency, p.images_per_s, p.p99_ms, p.failures)
            for candidate, result in tried for p in result.points]
    csv_path = output / "points.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["candidate", "concurrency", "images_per_s", "p99_ms", "failures"])
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(((p99, img) for _, _, img, p99, _ in rows))
    frontier, top = [], -1.0
    for p99, img in points:  # the points no other beats on both throughput and latency
        if img > top:
            frontier.append((p99, img))
            top = img
    figure, axis = plt.subplots(figsize=(7, 4.5))
    axis.scatter([p for p, _ in points], [i for _, i in points], s=12, color="#999", label="points tried")
    axis.plot([p for p, _ in frontier], [i for _, i in frontier], "o-", color="#c33", label="frontier")
    axis.axvline(budget_ms, linestyle="--", color="#36c", label=f"p99 budget {budget_ms:.0f} ms")
    axis.set_xlabel("p99 latency (ms)")
    axis.set_ylabel("images/s")
    axis.set_title(f"make tune: {len(rows)} points")
    axis.legend()
    png_path = output / "tune.png"
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return csv_path, png_path


@dataclasses.dataclass(frozen=True)
class Outcome:
    model: str
    baseline: Score
    best: Score
    best_candidate: dict
    budget_ms: float
    seconds: float
    changes: Edits  # the committed configs, edited to the winner's values
    committed: dict  # the knobs' committed values
    tried: tuple[tuple[dict, Score], ...]

    @property
    def points(self) -> int:
        """Measured points (one candidate at one concurrency), over every run."""
        return sum(len(result.points) for _, result in self.tried)

    def rows(self) -> list[dict]:
        """One row per run of a candidate: what it changes from the committed values, its score."""
        return [{"changes": {k: v for k, v in candidate.items() if self.committed.get(k) != v},
                 "images_per_s": round(result.images_per_s, 1), "p99_ms": round(result.p99_ms, 1),
                 "concurrency": result.concurrency} for candidate, result in self.tried]

    def table(self) -> str:
        lines = [f"{'candidate (changes from the committed values)':<56} {'img/s':>7} {'p99 ms':>7} {'clients':>7}"]
        for row in self.rows():
            changes = ", ".join(f"{k}={v}" for k, v in row["changes"].items()) or "committed values"
            lines.append(f"{changes:<56} {row['images_per_s']:>7.1f} {row['p99_ms']:>7.1f} {row['concurrency']:>7}")
        return "\n".join(lines)

    def line(self) -> str:
        return (f"tune: model={self.model} baseline_img_s={self.baseline.images_per_s:.1f} "
                f"best_img_s={self.best.images_per_s:.1f} p99_ms={self.best.p99_ms:.1f} budget_ms={self.budget_ms:.1f} "
                f"points={self.points} seconds={self.seconds:.0f}")


@dataclasses.dataclass(frozen=True)
class Target:
    """A running server to tune (`serve.LocalServer` has the same three attributes)."""

    http_url: str
    grpc_url: str
    admin_key: str | None


def tune(server: Target, bundle: Bundle, images: Sequence[bytes], output: Path, flavor: str = LOCAL,
         p99_ms: float | None = None, seconds: float = 3.0, max_points: int = 24, repeats: int = 2,
         model_label: str = "demo", progress: Callable[[str], None] = print,
         knobs: Sequence[Knob] | None = None) -> Outcome:
    """Search `knobs` (default: the flavor's) on `server` (serving `bundle` as `flavor`, in explicit model
    control), then write the report and the patch to `output`. The server is left with the committed configs."""
    from tritonclient.utils import InferenceServerException

    from client.images import PreparedImage
    from loadtest.loop import closed_loop

    started = time.monotonic()
    names = bundle.ensemble_tensors
    prepared = [PreparedImage(f"#{i}", data, "JPEG", 0, 0) for i, data in enumerate(images)]
    admin = LiveServer(server.http_url, server.admin_key)
    live = Candidates(admin, bundle, flavor)
    knobs = knobs or knobs_for(flavor, bundle)

    def run(concurrency: int, run_seconds: float):
        return closed_loop("grpc", server.grpc_url, bundle.ensemble.name, names, prepared, concurrency, run_seconds)

    def p99(latencies: list[float]) -> float:
        return sorted(latencies)[int(0.99 * (len(latencies) - 1))] if latencies else float("inf")

    try:
        admin.check()
        baseline = current_values(bundle, knobs)
        live.load(baseline)
        run(2, 1.0)  # warm the connections and the models
        budget = p99_ms or BUDGET_FACTOR * p99(run(1, seconds).latencies_ms)
        progress(f"p99 budget: {budget:.1f} ms" + ("" if p99_ms else f" ({BUDGET_FACTOR:g} x the p99 at concurrency 1)"))

        def measure(candidate: dict) -> Score:
            try:
                live.load(candidate)
            except InferenceServerException as exc:  # e.g. more instances than the host can hold: not a fit
                progress(f"  {candidate} did not load: {exc.message()}")
                return Score(0.0, float("inf"), 0, ())
            run(2, 0.5)
            points = []
            for concurrency in CONCURRENCIES:
                result = run(concurrency, seconds)
                points.append(Point(candidate, concurrency, result.requests_per_s, p99(result.latencies_ms), result.failures))
            return score(points, budget)

        baselines = [measure(baseline) for _ in range(repeats)]
        # The spread of the score between identical runs: the machine's noise.
        noise = 2 * spread([b.images_per_s for b in baselines])
        progress(f"baseline, {repeats} runs: {', '.join(f'{b.images_per_s:.1f}' for b in baselines)} img/s "
                 f"(noise margin {noise:.1f})")
        baseline_score = mean_score(baselines)
        best, best_score, tried = search(knobs, baseline, measure, noise, max_points, progress, baseline_score,
                                         live.served)
        if best != baseline:
            base_runs, best_runs = confirm(measure, baseline, best, max(repeats, CONFIRM_ROUNDS), progress)
            tried += [(dict(baseline), b) for b in base_runs] + [(dict(best), b) for b in best_runs]
            # The rounds, measured side by side, are what the summary reports.
            baseline_score = mean_score(base_runs)
            if confirmed(base_runs, best_runs):
                best_score = mean_score(best_runs)
            else:
                progress("the winner did not beat the committed values in every round: they stay")
                best, best_score = dict(baseline), baseline_score
    finally:
        try:
            live.restore()  # the server as it was, also after an error
        finally:
            admin.close()
    write_report(tried, budget, output)
    changes = patch(bundle, {k: v for k, v in best.items() if v != baseline.get(k)})
    (output / "recommended.diff").write_text(unified_diff(changes, bundle.root.parent))
    return Outcome(model_label, baseline_score, best_score, best, budget, time.monotonic() - started, changes, baseline,
                   tuple(tried))
