"""S3 round trips against a local moto server (DVC remote and MLflow artifacts), no credential in MLflow,
and two stage processes logging to one SQLite MLflow database at once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MARKER = "advreid-secret-marker-7f3a9c"  # the secret key: must never reach MLflow
BUCKET = "advreid-test"
DVC = [sys.executable, "-m", "dvc"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A moto S3 server bound to 127.0.0.1 with one bucket; yields the environment that points at it."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "advreid-test-key",
        "AWS_SECRET_ACCESS_KEY": MARKER,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site-cache"),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    env.pop("ADVREID_MLFLOW_PARENT_RUN_ID", None)
    try:
        import boto3

        deadline = time.monotonic() + 60
        while True:
            try:
                client = boto3.client(
                    "s3",
                    endpoint_url=endpoint,
                    aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                    aws_secret_access_key=MARKER,
                    region_name="us-east-1",
                )
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        env["ADVREID_TEST_ENDPOINT"] = endpoint
        yield env
    finally:
        server.terminate()
        server.wait(30)


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


# A stage that logs a parameter, a metric and an artifact through the project's tracking helper.
STAGE = textwrap.dedent(
    """
    from pathlib import Path
    from advreid.tracking.mlflow_run import stage_run

    Path("out").mkdir(exist_ok=True)
    Path("out/data.bin").write_bytes(bytes(range(256)) * 40)
    Path("out/report.txt").write_text("report\\n")
    with stage_run(None, {"size": 256}, root=Path.cwd()) as run:
        run.log_metrics({"bytes": 10240})
        run.log_artifact("out/report.txt", "reports")
    """
)


@pytest.mark.slow
def test_dvc_push_pull_and_mlflow_artifacts_on_s3_without_secrets(tmp_path: Path, s3_env: dict[str, str]) -> None:
    import boto3
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    env = {**s3_env, "ADVREID_MLFLOW_ARTIFACTS": f"s3://{BUCKET}/mlflow"}
    endpoint = env["ADVREID_TEST_ENDPOINT"]
    project = tmp_path / "project"
    project.mkdir()
    (project / "stage.py").write_text(STAGE)
    (project / "dvc.yaml").write_text(
        f"stages:\n  make:\n    cmd: {sys.executable} stage.py\n    deps: [stage.py]\n    outs: [out]\n"
    )
    _run(["git", "init", "-q"], project, env)
    _run([*DVC, "init", "-q"], project, env)
    _run([*DVC, "remote", "add", "-d", "storage", f"s3://{BUCKET}/dvc"], project, env)
    _run([*DVC, "remote", "modify", "storage", "endpointurl", endpoint], project, env)
    _run([*DVC, "repro", "-q"], project, env)
    _run(["git", "add", "-A"], project, env)
    _run(["git", "commit", "-qm", "pipeline"], project, env)
    _run([*DVC, "push", "-q"], project, env)

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    assert not (clone / "out").exists()
    _run([*DVC, "pull", "-q"], clone, env)
    for name in ("data.bin", "report.txt"):
        assert (clone / "out" / name).read_bytes() == (project / "out" / name).read_bytes()

    # The stage's MLflow artifact went to the bucket, and reads back through MLflow.
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("advreid").experiment_id])
    assert run.info.artifact_uri.startswith(f"s3://{BUCKET}/mlflow/")
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL")})
    try:
        local = download_artifacts(
            run_id=run.info.run_id,
            artifact_path="reports/report.txt",
            dst_path=str(tmp_path),
            tracking_uri=env["MLFLOW_TRACKING_URI"],
        )
    finally:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
            os.environ.pop(key, None)
    assert Path(local).read_text() == "report\n"

    # No credential reached MLflow: neither its database nor any object in the bucket holds the secret.
    assert MARKER.encode() not in (tmp_path / "mlflow.db").read_bytes()
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key=MARKER, region_name="us-east-1"
    )
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert any(key.startswith("mlflow/") for key in keys) and any(key.startswith("dvc/") for key in keys)
    for key in keys:
        assert MARKER.encode() not in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read(), key


CONCURRENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from advreid.tracking.mlflow_run import stage_run

    while time.time() < float(sys.argv[2]):  # both processes start logging at the same moment
        time.sleep(0.01)
    with stage_run(sys.argv[1], {"worker": sys.argv[1]}, root=Path.cwd()) as run:
        for step in range(20):
            run.log_metrics({"step": step}, step=step)
    """
)


@pytest.mark.slow
def test_two_stage_processes_log_to_one_sqlite_db_at_once(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    (tmp_path / "worker.py").write_text(CONCURRENT)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("ADVREID_MLFLOW_PARENT_RUN_ID", None)
    start_at = str(time.time() + 20)  # past both interpreters' imports, even on a loaded machine
    workers = [
        subprocess.Popen([sys.executable, "worker.py", name, start_at], cwd=tmp_path, env=env, stderr=subprocess.PIPE)
        for name in ("one", "two")
    ]
    errors = [proc.communicate(timeout=300)[1].decode() for proc in workers]
    assert [proc.returncode for proc in workers] == [0, 0], errors
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("advreid").experiment_id])
    assert sorted(r.data.tags["advreid.stage"] for r in runs) == ["one", "two"]
    assert all(
        r.info.status == "FINISHED" and len(client.get_metric_history(r.info.run_id, "step")) == 20 for r in runs
    )
