"""The tuner's search (on a synthetic objective with a known optimum) and its patch writing (values edited
in place, a field added where its message is written, every comment kept, validated); the whole run
on a real local server is `make tune`, whose figures are in docs/performance.md."""

from __future__ import annotations

import dataclasses
import shutil
import time

import pytest

from scripts import tune
from scripts.config import ConfigError, load_bundle
from scripts.config_text import unified_diff
from scripts.constants import LOCAL, ORT_THREADS
from scripts.repository import flavor_config, host_cores
from tests.conftest import REPOSITORY

KNOBS = (
    tune.Knob("classifier.instances", (1, 2, 3), tune._instances),
    tune.Knob("classifier.max_queue_delay_us", (0, 100, 1000), tune._queue_delay),
    tune.Knob("preprocess.instances", (1, 2), tune._instances),
)


def synthetic(objective):
    """A measure() whose throughput is objective(candidate), p99 a constant: counts its calls."""
    calls = []

    def measure(candidate):
        calls.append(dict(candidate))
        point = tune.Point(candidate, 8, objective(candidate), 10.0, 0)
        return tune.score([point], budget_ms=20.0)
    return measure, calls


def test_coordinate_search_climbs_to_the_optimum_without_trying_every_combination():
    def objective(c):  # best at 3 classifier instances, 100 µs, 2 preprocess instances
        delay_cost = abs(c["classifier.max_queue_delay_us"] - 100) / 2
        return 100 + 30 * c["classifier.instances"] - delay_cost + 15 * c["preprocess.instances"]

    measure, calls = synthetic(objective)
    baseline = {"classifier.instances": 1, "classifier.max_queue_delay_us": 1000, "preprocess.instances": 1}
    best, score, tried = tune.search(KNOBS, baseline, measure, noise=0.0, max_points=50, progress=lambda m: None)
    assert best == {"classifier.instances": 3, "classifier.max_queue_delay_us": 100, "preprocess.instances": 2}
    assert score.images_per_s == objective(best)
    assert len(calls) < 3 * 3 * 2, "fewer measurements than the full grid"
    assert len(tried) == len(calls)


def test_a_gain_within_the_noise_does_not_win_and_the_point_budget_holds():
    measure, calls = synthetic(lambda c: 100 + c["classifier.instances"])  # +1 img/s per instance: noise
    baseline = {"classifier.instances": 1, "classifier.max_queue_delay_us": 100, "preprocess.instances": 1}
    best, _, _ = tune.search(KNOBS, baseline, measure, noise=5.0, max_points=50, progress=lambda m: None)
    assert best == baseline
    measure, calls = synthetic(lambda c: 100.0)
    tune.search(KNOBS, baseline, measure, noise=0.0, max_points=3, progress=lambda m: None)
    assert len(calls) == 3


def test_a_candidate_serving_what_one_already_tried_serves_is_not_measured_again():
    def served(c):  # queue delays of 0 and 100 µs serve alike here
        return {**c, "classifier.max_queue_delay_us": max(c["classifier.max_queue_delay_us"], 100)}

    measure, calls = synthetic(lambda c: 100.0 + 10 * c["preprocess.instances"])
    baseline = {"classifier.instances": 1, "classifier.max_queue_delay_us": 100, "preprocess.instances": 1}
    best, _, tried = tune.search(KNOBS, baseline, measure, noise=0.0, max_points=50, progress=lambda m: None,
                                 served=served)
    assert best["preprocess.instances"] == 2, "the search goes on past the skipped value"
    assert all(c["classifier.max_queue_delay_us"] != 0 for c in calls)
    assert any(c["classifier.max_queue_delay_us"] == 1000 for c in calls)
    assert len(tried) == len(calls)


def test_onnx_runtime_threads_left_to_the_host_serve_what_the_hosts_share_serves(bundle):
    candidates = tune.Candidates(None, bundle, LOCAL)  # what would be served: no server needed
    baseline = tune.current_values(bundle, tune.knobs_for(LOCAL, bundle))
    assert baseline["classifier.intra_op_threads"] == 0

    def served(threads):
        return candidates.served({**baseline, "classifier.intra_op_threads": threads})

    share = max(1, host_cores() // bundle.classifier_config.instance_group[0].count)
    assert served(0) == served(share)
    assert served(0) != served(share + 1)


def test_a_candidate_over_the_latency_budget_scores_nothing():
    points = [tune.Point({}, 4, 300.0, 25.0, 0), tune.Point({}, 8, 200.0, 15.0, 0), tune.Point({}, 16, 500.0, 12.0, 3)]
    best = tune.score(points, budget_ms=20.0)
    assert (best.images_per_s, best.concurrency) == (200.0, 8), "over budget or failing points do not count"
    assert tune.score(points[:1], budget_ms=20.0).images_per_s == 0.0


def test_the_baseline_is_what_the_committed_configs_say(bundle):
    values = tune.current_values(bundle, tune.knobs_for("local", bundle))
    assert values["classifier.instances"] == bundle.classifier_config.instance_group[0].count
    assert values["classifier.max_queue_delay_us"] == bundle.classifier_config.dynamic_batching.max_queue_delay_microseconds
    assert values["classifier.preferred_batch_size"] == ()
    assert values["check.instances"] == bundle.check_config.instance_group[0].count


def test_the_patch_edits_values_in_place_adds_a_field_and_keeps_every_comment(tmp_path):
    repository = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, repository)
    bundle = load_bundle(repository)
    candidate = {"classifier.instances": 3, "classifier.preferred_batch_size": (8,), "preprocess.max_queue_delay_us": 1000}
    changes = tune.patch(bundle, candidate)
    assert set(changes) == {bundle.config_path("classifier"), bundle.config_path("preprocess")}
    for before, after in changes.values():
        assert [line for line in before.splitlines() if "#" in line] == [line for line in after.splitlines() if "#" in line]
    diff = unified_diff(changes, tmp_path)
    assert "+  preferred_batch_size: [ 8 ]" in diff and "+    count: 3" in diff
    assert "+  max_queue_delay_microseconds: 1000" in diff
    for path, (_, after) in changes.items():
        path.write_text(after)
    tuned = load_bundle(repository)
    assert tuned.classifier.preferred_batch_sizes == (8,) and tuned.classifier_config.instance_group[0].count == 3


def test_an_invalid_candidate_is_refused_before_anything_is_written(tmp_path):
    repository = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, repository)
    bundle = load_bundle(repository)
    with pytest.raises(ConfigError, match="the tuned configs do not validate"):
        tune.patch(bundle, {"classifier.preferred_batch_size": (64,)})  # over max_batch_size 32
    assert (repository / "classifier" / "config.pbtxt").read_text() == (REPOSITORY / "classifier" / "config.pbtxt").read_text()


def preprocess_threads(server_pid: int) -> int:
    """Threads of the server's preprocessing python-backend stubs (one process per instance)."""
    from pathlib import Path

    from scripts.process_stats import tree

    total = 0
    for pid in tree(server_pid):
        try:
            if b"/preprocess/1/model.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                status = Path(f"/proc/{pid}/status").read_text()
                total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))
        except OSError:
            continue
    return total


@pytest.mark.integration
def test_a_candidate_is_loaded_on_the_live_server_without_a_restart(built, bundle, tmp_path, heldout):
    from client import ImageClassifierClient
    from scripts.live import LiveServer
    from scripts.serve import local_server

    with local_server(built, log_path=tmp_path / "server.log", model_control="explicit") as server:
        pid = server.process.pid
        live = LiveServer(server.http_url, server.admin_key)
        candidates = tune.Candidates(live, bundle)
        try:
            threads_before = preprocess_threads(server.process.pid)
            candidates.load({"classifier.instances": 2, "classifier.max_queue_delay_us": 1000,
                             "preprocess.num_threads": bundle.preprocess.num_threads + 2})
            config = live.config(bundle.classifier.model_name)
            assert config["instance_group"][0]["count"] == 2
            assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 1000
            assert config["backend"] == "python", "the candidate is derived for the served flavor, as the build does"
            instances = bundle.preprocess_config.instance_group[0].count
            expected = threads_before + 2 * instances
            deadline = time.monotonic() + 30  # the replaced instances' stubs exit after the new ones are ready
            while preprocess_threads(server.process.pid) != expected and time.monotonic() < deadline:
                time.sleep(0.2)
            assert preprocess_threads(server.process.pid) == expected, \
                "each preprocessing instance's DALI pipeline runs the loaded config's num_threads"
            with ImageClassifierClient(server.grpc_url) as client:
                assert all(r.ok for r in client.classify([p.read_bytes() for _, p in heldout[:8]], top_k=1))
        finally:
            live.close()
        assert server.process.pid == pid and server.process.poll() is None


def test_knobs_are_only_those_the_flavors_backend_takes(bundle):
    names = {flavor: {knob.name for knob in tune.knobs_for(flavor, bundle)} for flavor in ("gpu", "cpu", "local")}
    assert {"check.instances", "preprocess.instances", "classifier.instances"} <= names["gpu"] & names["cpu"] & names["local"]
    assert "classifier.intra_op_threads" not in names["gpu"], "TensorRT has no ONNX Runtime threads"
    assert "classifier.intra_op_threads" in names["cpu"] & names["local"]
    assert "preprocess.max_queue_delay_us" not in names["cpu"], "the cpu flavor's DALI step does not batch"
    assert "preprocess.num_threads" in names["gpu"] & names["cpu"] & names["local"]
    unchecked = dataclasses.replace(bundle, check=None, check_config=None)
    assert not [knob for knob in tune.knobs_for("local", unchecked) if knob.role == "check"]


def test_a_winner_that_does_not_hold_up_when_measured_again_is_not_recommended():
    def score_of(rate):
        return tune.score([tune.Point({}, 4, rate, 10.0, 0)], budget_ms=20.0)

    assert tune.beats(score_of(120.0), score_of(100.0), noise=5.0)
    assert not tune.beats(score_of(102.0), score_of(100.0), noise=0.0), "under MIN_GAIN"
    assert not tune.beats(score_of(110.0), score_of(100.0), noise=12.0), "within the noise"


@pytest.mark.integration
def test_tune_cli_against_a_running_server_by_url_leaves_it_serving_the_committed_configs(built, bundle, tmp_path):
    import json
    import subprocess
    import sys

    from scripts.live import LiveServer
    from scripts.serve import local_server

    def tune_cli(server, *extra):
        return subprocess.run(
            [sys.executable, "-m", "scripts", "tune", "--url", server.http_url, "--grpc-url", server.grpc_url,
             "--admin-key", server.admin_key, "--flavor", "local", "--build-dir", str(tmp_path / "build"),
             "--images", "8", "--seconds", "0.5", "--repeats", "1", "--max-points", "2", *extra],
            capture_output=True, text=True, timeout=300)

    with local_server(built, log_path=tmp_path / "server.log", model_control="explicit") as server:
        pid = server.process.pid
        done = tune_cli(server, "--json")
        assert done.returncode == 0, done.stderr
        outcome = json.loads(done.stdout)
        assert outcome["line"].startswith("tune: model=demo baseline_img_s=")
        assert outcome["tried"][0]["changes"] == {} and any(row["changes"] for row in outcome["tried"])
        assert "preprocess.num_threads" in done.stderr or "classifier.instances=" in done.stderr, "candidates were tried"
        assert (tmp_path / "build" / "tune" / "points.csv").read_text().count("\n") > 4
        assert server.process.pid == pid and server.process.poll() is None
        live = LiveServer(server.http_url, server.admin_key)
        try:
            classifier = live.config(bundle.classifier.model_name)
        finally:
            live.close()
        committed = flavor_config(bundle, bundle.classifier.model_name, "local")
        assert classifier["instance_group"][0]["count"] == committed.instance_group[0].count, "left as committed"

    with local_server(built, log_path=tmp_path / "static.log") as server:  # model control "none"
        done = tune_cli(server)
        assert done.returncode == 1 and "does not load models on request" in done.stderr, done.stderr


def test_the_score_is_the_rate_at_the_budget_between_the_concurrencies_around_it():
    points = [tune.Point({}, 4, 200.0, 10.0, 0), tune.Point({}, 8, 300.0, 20.0, 0), tune.Point({}, 16, 400.0, 40.0, 0)]
    assert tune.score(points, budget_ms=30.0).images_per_s == pytest.approx(350.0), "halfway from 20 to 40 ms"
    assert tune.score(points, budget_ms=40.0).images_per_s == 400.0
    assert tune.score(points, budget_ms=20.0).images_per_s == 300.0
    failing = [*points[:2], tune.Point({}, 16, 400.0, 40.0, 2)]
    assert tune.score(failing, budget_ms=30.0).images_per_s == 300.0, "a point with failures gives no credit"


def test_the_winner_must_win_every_alternating_round():
    def runs(*rates):
        return [tune.score([tune.Point({}, 8, rate, 10.0, 0)], budget_ms=20.0) for rate in rates]

    order = []

    def measure(candidate):
        order.append(candidate["classifier.instances"])
        return runs(100.0 + 10 * candidate["classifier.instances"])[0]

    base, best = tune.confirm(measure, {"classifier.instances": 1}, {"classifier.instances": 2}, 3, progress=lambda m: None)
    assert order == [1, 2, 1, 2, 1, 2], "measured alternately"
    assert tune.confirmed(base, best)
    assert not tune.confirmed(runs(100, 100, 100), runs(130, 95, 130)), "one lost round"
    assert not tune.confirmed(runs(100, 100, 100), runs(101, 101, 101)), "under MIN_GAIN"


@pytest.mark.integration
def test_a_candidate_that_does_not_load_scores_nothing_and_the_server_keeps_the_committed_configs(built, bundle, tmp_path):
    from client import ImageClassifierClient
    from scripts import demo
    from scripts.live import LiveServer
    from scripts.serve import local_server

    # A thread count that is not a number: the classifier fails to load with it (Triton keeps the old one).
    knobs = (tune.Knob("classifier.intra_op_threads", ("1O",), tune._parameter(ORT_THREADS)),)
    with local_server(built, log_path=tmp_path / "server.log", model_control="explicit") as server:
        messages = []
        outcome = tune.tune(server, bundle, demo.camera_frames(8), tmp_path / "tune", seconds=0.3, repeats=1,
                            max_points=4, progress=messages.append, knobs=knobs)
        failed = [result for candidate, result in outcome.tried if candidate.get("classifier.intra_op_threads") == "1O"]
        assert failed and failed[0].images_per_s == 0.0 and not failed[0].points
        assert any("did not load" in message for message in messages)
        assert outcome.best_candidate == tune.current_values(bundle, knobs) and not outcome.changes
        live = LiveServer(server.http_url, server.admin_key)
        try:
            threads = live.config(bundle.classifier.model_name)["parameters"][ORT_THREADS]["string_value"]
        finally:
            live.close()
        committed = flavor_config(bundle, bundle.classifier.model_name, LOCAL)
        assert threads == committed.parameters[ORT_THREADS].string_value
        with ImageClassifierClient(server.grpc_url) as client:
            assert all(r.ok for r in client.classify(demo.camera_frames(4), top_k=1))
