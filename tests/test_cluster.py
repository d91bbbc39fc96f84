"""Multi-node sweeps on one host: a real Ray cluster of a head and worker nodes
(ray.cluster_utils.Cluster), the sweep command joining it with --address. Trials spread over
the workers; a worker removed mid-sweep costs nothing finished; fractional (declared) GPUs
pack two trials per GPU; and the cluster cases of bad input exit 2."""
import glob
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import COLA_SCRIPT, cli_env, ray_tmpdir, run_main, read_table


@pytest.fixture
def cluster_factory(tmp_path, monkeypatch):
    """Start clusters whose session files live under a short temp dir; shut them down after."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmpdir(tmp_path)))
    made = []

    def make(workers: list[dict]):
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        nodes = [c.add_node(**w) for w in workers]
        c.wait_for_nodes()
        made.append(c)
        return c, nodes

    yield make
    for c in made:
        c.shutdown()


def start(args, tmp_path):
    return subprocess.Popen([sys.executable, str(COLA_SCRIPT), *map(str, args)], cwd=tmp_path,
                            env=cli_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def rows_of(exp):
    out = {}
    for f in glob.glob(str(exp / "trial_*" / "result.json")):
        out[f] = [json.loads(line) for line in open(f) if line.strip().endswith("}")]
    return out


@pytest.mark.slow
def test_trials_spread_and_survive_a_lost_node(cluster_factory, tmp_path, shared_cola):
    cluster, (w1, w2) = cluster_factory([{"num_cpus": 1}, {"num_cpus": 1}])
    storage = tmp_path / "runs"
    exp = storage / "cola_lora"
    # Real CoLA sentences, not the smoke set: an epoch takes seconds instead of 0.2 s, so the
    # trial seen on the second worker at epoch <= 3 is still running when the node goes (with
    # 0.2 s epochs it sometimes finished all 6 first, and the test failed).
    proc = start(["--smoke-test", "--address", cluster.address, "--storage-is-shared",
                  "--data-dir", shared_cola, "--max-train-samples", "3000",
                  "--storage-path", storage, "--num-samples", "4", "--max-epochs", "6",
                  "--grace-period", "6", "--retrain-top-k", "0"], tmp_path)
    removed_at = None  # (result file, epoch reported on w2 before the node went)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.3)
        if removed_at is None:
            for f, rows in rows_of(exp).items():
                # well before its end, so that it is still running when the node goes
                if rows and rows[-1]["node_id"] == w2.node_id and rows[-1]["epoch"] <= 3:
                    cluster.remove_node(w2, allow_graceful=False)  # the node dies mid-trial
                    removed_at = (f, rows[-1]["epoch"])
                    break
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "cluster at" in out and "3 nodes" in out
    assert removed_at is not None, "no trial was seen running on the second worker"

    from search.sweep import trial_statuses

    statuses = trial_statuses(exp)
    assert len(statuses) == 4 and set(statuses.values()) == {"TERMINATED"}
    all_rows = rows_of(exp)
    nodes = {r["node_id"] for rows in all_rows.values() for r in rows}
    assert {w1.node_id, w2.node_id} <= nodes  # trials ran on both workers
    # The trial caught on the lost node went on elsewhere from its checkpoint: the epochs it
    # reported continue (no restart from epoch 1) and end at max_epochs on the other worker.
    f, epoch_before = removed_at
    moved = all_rows[f]
    after = [r for r in moved if r["node_id"] != w2.node_id]
    assert after, f"the trial on the lost node did not go on elsewhere: {moved}"
    assert after[0]["epoch"] >= epoch_before and after[-1]["epoch"] == 6
    assert after[0]["node_id"] == w1.node_id
    trials = read_table(exp / "trials.csv")
    assert (trials["status"] == "completed").all() and (trials["epochs_run"] == 6).all()


@pytest.mark.slow
def test_fractional_gpus_run_eight_at_once(cluster_factory, tmp_path):
    # 4 GPUs declared to Ray (no CUDA here: trials that get a GPU id still run on the CPU).
    cluster, _ = cluster_factory([{"num_cpus": 8, "num_gpus": 4}])
    storage = tmp_path / "runs"
    proc = start(["--smoke-test", "--address", cluster.address, "--storage-is-shared",
                  "--storage-path", storage, "--gpus", "4", "--gpus-per-trial", "0.5",
                  "--num-samples", "8", "--max-epochs", "2", "--grace-period", "2",
                  "--retrain-top-k", "0"], tmp_path)
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "4 of 4 GPUs, 0.5 GPU + 1 CPU per trial" in out and "8 trials at a time" in out
    # Every trial held its half GPU at the same time as the seven others: their lifetimes
    # (first start to last result) all overlap.
    spans = []
    for rows in rows_of(storage / "cola_lora").values():
        first, last = rows[0], rows[-1]
        spans.append((first["timestamp"] - first["time_total_s"], last["timestamp"]))
    assert len(spans) == 8
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans


@pytest.fixture(scope="module")
def joined_cluster(tmp_path_factory):
    """A head and two 1-CPU workers, shared by the bad-input cases below: each only joins it
    and leaves, which changes nothing in it. Its session files live in their own short temp
    dir (the commands' RAY_TMPDIR is removed after each run)."""
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", str(ray_tmpdir(tmp_path_factory.mktemp("joined"))))
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


# The first two join a 3-node cluster (slow); the third finds none.
@pytest.mark.parametrize("case", [pytest.param("missing-gpus", marks=pytest.mark.slow),
                                  pytest.param("local-storage-multinode", marks=pytest.mark.slow),
                                  "no-cluster"])
def test_cluster_bad_input(case, request, tmp_path, monkeypatch, capsys):
    # The command runs in this process (run_main): it joins the cluster (or fails to) and
    # exits 2; the exit code of a real process is proven in test_bad_input.
    storage = tmp_path / "runs"
    if case == "no-cluster":
        address, extra = "127.0.0.1:1", []
        needles = ["--address '127.0.0.1:1'", "could not connect"]
    else:
        address = request.getfixturevalue("joined_cluster").address
        extra, needles = {
            "missing-gpus": (["--gpus", "2", "--storage-is-shared"],
                             ["--gpus 2", "asked for 2 GPUs, found 0 in the cluster"]),
            "local-storage-multinode": ([], ["--storage-path", "local path of this machine",
                                             "3 nodes", "--storage-is-shared"]),
        }[case]
    t0 = time.time()
    proc = run_main(COLA_SCRIPT, ["--smoke-test", "--address", address, "--storage-path",
                                  *map(str, [storage, *extra])], tmp_path, monkeypatch, capsys)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    for n in needles:
        assert n in out, (n, out[-2000:])
    assert not storage.exists()
    assert time.time() - t0 < 60
    assert not os.path.exists(storage)


def test_cluster_file_is_valid():
    """ray_cluster.yaml passes the cluster launcher's own schema validation and keeps the
    promises the README makes: CPU head, 0..8 autoscaling 4-GPU workers, this checkout
    installed on every node, token authentication on, dashboard on localhost."""
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    from conftest import REPO

    raw = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    validate_config(prepare_config(raw))
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    gpu = [t for name, t in types.items() if name != raw["head_node_type"]]
    assert len(gpu) == 1 and gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] == 8
    assert any("pip install" in c and "~/peft-sweeps" in c for c in raw["setup_commands"])
    assert raw["file_mounts"]["~/peft-sweeps"] == "."
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert any("--dashboard-host=127.0.0.1" in c for c in raw["head_start_ray_commands"])
