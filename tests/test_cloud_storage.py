"""Cloud storage (--storage-path s3://...): a real S3 API served in-process by moto, reached
through pyarrow exactly as a bucket would be (endpoint given in the URI's query). Tune writes
trials and checkpoints to the bucket; the driver's tables, experiment.json, optuna.db and
retrained models reach it through the local mirror; the report reads it back. Wrong buckets
and schemes exit 2 before any work."""
import json
import subprocess
import sys

import pytest

from conftest import COLA_SCRIPT, REPO, cli_env, run_main, read_table

AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def s3():
    """(endpoint query string, boto3 client) of a local S3 server with bucket "sweeps"."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket="sweeps")
    yield f"endpoint_override={host}:{port}&scheme=http&region=us-east-1", client
    server.stop()


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="sweeps", Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.slow
def test_sweep_to_s3_then_report_and_resume(s3, tmp_path, monkeypatch, capsys):
    query, client = s3
    uri = f"s3://sweeps/runs?{query}"
    mirror = tmp_path / "mirror"
    args = ["--smoke-test", "--storage-path", uri, "--local-mirror", mirror,
            "--num-samples", "3", "--max-epochs", "2", "--retrain-top-k", "1",
            "--retrain-seeds", "1"]
    # The commands run in this process (run_main); Tune's trial workers are Ray's processes
    # and reach the bucket on their own.
    proc = run_main(COLA_SCRIPT, list(map(str, args)), tmp_path, monkeypatch, capsys, **AWS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "s3://sweeps/runs/cola_lora" in proc.stdout  # the plan names the bucket

    stored = keys(client, "runs/cola_lora/")
    rel = [k.removeprefix("runs/cola_lora/") for k in stored]
    # Tune wrote trials and their checkpoints to the bucket ...
    trial_results = [k for k in rel if k.startswith("trial_") and k.endswith("/result.json")]
    assert len(trial_results) == 3
    assert any("/checkpoint_" in k for k in rel if k.startswith("trial_"))
    # ... and the driver pushed its own files there.
    for f in ["experiment.json", "optuna.db", "trials.csv", "epochs.csv", "retrain.csv",
              "retrain_runs.csv"]:
        assert f in rel, f
    jobs = [k for k in rel if k.startswith("retrained/") and k.endswith("/metrics.json")]
    assert len(jobs) == 1
    body = client.get_object(Bucket="sweeps", Key=f"runs/cola_lora/{jobs[0]}")["Body"].read()
    assert "dev_mcc" in json.loads(body)["metrics"]
    trials = read_table(mirror / "cola_lora" / "trials.csv")
    assert len(trials) == 3 and trials["best_val_mcc"].notna().all()
    record = json.loads((mirror / "cola_lora" / "experiment.json").read_text())
    assert record["storage"].startswith("s3://sweeps/runs/cola_lora") and "endpoint" not in record["storage"]
    # No checkpoints were pulled into the mirror: only Tune's result files.
    assert not list((mirror / "cola_lora").glob("trial_*/checkpoint_*"))

    # The same name again without --resume: refused, the bucket says it exists.
    again = run_main(COLA_SCRIPT, list(map(str, args)), tmp_path, monkeypatch, capsys, **AWS)
    assert again.returncode == 2 and "already exists" in again.stderr

    # Resume from another machine (an empty mirror): a finished sweep is read back, the
    # finished retrain is fetched and skipped.
    other = tmp_path / "other-mirror"
    resumed = run_main(COLA_SCRIPT, list(map(str, [*args[:4], other, *args[5:], "--resume"])),
                       tmp_path, monkeypatch, capsys, **AWS)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "1 already done, 0 to run" in resumed.stdout
    assert len(read_table(other / "cola_lora" / "trials.csv")) == 3

    # The report reads the experiment straight from the bucket and stores itself there.
    rep = subprocess.run([sys.executable, "-m", "results", "report", f"s3://sweeps/runs/cola_lora?{query}"],
                         cwd=REPO, env={**cli_env(tmp_path, **AWS), "HOME": str(tmp_path)},
                         capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
    assert "runs/cola_lora/report/report.md" in keys(client, "runs/cola_lora/report/")
    text = client.get_object(Bucket="sweeps", Key="runs/cola_lora/report/report.md")["Body"].read()
    assert b"Leaderboard" in text or b"leaderboard" in text


def test_bad_cloud_storage_exits_2_before_work(s3, tmp_path, monkeypatch, capsys):
    # In this process (run_main); the exit code of a real process is proven in test_bad_input.
    query, client = s3
    mirror = tmp_path / "mirror"
    cases = [
        (f"s3://no-such-bucket/runs?{query}", "not writable"),
        ("nosuchscheme://bucket/runs", "not a storage URI"),
    ]
    for uri, why in cases:
        proc = run_main(COLA_SCRIPT, ["--smoke-test", "--storage-path", uri,
                                      "--local-mirror", str(mirror)], tmp_path, monkeypatch,
                        capsys, **AWS)
        assert proc.returncode == 2, (uri, proc.stderr[-2000:])
        assert "--storage-path" in proc.stderr and why in proc.stderr, proc.stderr[-2000:]
        assert not proc.ray_started and not mirror.exists()
    # A mirror flag without cloud storage is a mistake, not silently ignored.
    proc = run_main(COLA_SCRIPT, ["--smoke-test", "--storage-path", str(tmp_path / "runs"),
                                  "--local-mirror", str(mirror)], tmp_path, monkeypatch, capsys,
                    **AWS)
    assert proc.returncode == 2 and "--local-mirror" in proc.stderr


def test_pull_refuses_keys_that_leave_the_mirror(s3, tmp_path, monkeypatch):
    """A bucket key is any string: one with '..' must not be written outside the mirror."""
    from models.errors import InputError
    from results.storage import open_remote

    query, client = s3
    for k, v in AWS.items():
        monkeypatch.setenv(k, v)
    client.put_object(Bucket="sweeps", Key="evil/exp/ok.txt", Body=b"ok")
    client.put_object(Bucket="sweeps", Key="evil/exp/../../../escaped.txt", Body=b"x")
    assert "evil/exp/../../../escaped.txt" in keys(client, "evil/")
    remote = open_remote(f"s3://sweeps/evil?{query}", probe=False)
    mirror = tmp_path / "deep" / "mirror" / "exp"
    with pytest.raises(InputError, match=r"refusing key .*\.\./\.\./\.\./escaped\.txt"):
        remote.pull(mirror, "exp")
    assert not list(tmp_path.rglob("escaped.txt"))
