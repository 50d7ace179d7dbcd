"""The feature pass spread over jobs: content-hash shards, ``submission.py --stage``, and
``scripts/slurm_submit.py`` on a real one-node Slurm cluster started on localhost.

The cluster test needs Debian's ``slurmctld``, ``slurmd`` and ``slurm-client`` and root (``.ci/run``
installs them); it is skipped, with the reason, where they are missing. It submits the three jobs
for a tiny demo Dataset and checks that each array job computed as many images as its part holds,
the same rows as one local process, and that the last job wrote the same ``submission.csv`` as the
same command run here on the filled cache, which computes nothing more; and that a failed job, or a
job ``sbatch`` refuses, leaves nothing behind in the queue.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import make_demo_dataset  # noqa: E402
import slurm_submit  # noqa: E402
import submission  # noqa: E402
from cli import InputError, shard_spec  # noqa: E402
from feature_store import FeatureStore, file_sha256, shard_keys  # noqa: E402

DAEMONS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol")


def test_shards_split_the_keys_whatever_their_order():
    keys = [f"{i:064x}" for i in range(1000, 0, -7)] + ["ab" * 32] * 3  # duplicates count once
    parts = [shard_keys(keys, k, 4) for k in range(4)]
    assert sorted(sum(parts, [])) == sorted(set(keys)), "the parts cover every key, each once"
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert [shard_keys(list(reversed(keys)), k, 4) for k in range(4)] == parts
    with pytest.raises(ValueError):
        shard_keys(keys, 4, 4)


def test_shard_spec():
    assert shard_spec("0/1") == (0, 1) and shard_spec("7/8") == (7, 8)
    import argparse

    for bad in ("8/8", "1", "a/b", "-1/4", "0/0"):
        with pytest.raises(argparse.ArgumentTypeError):
            shard_spec(bad)


def test_job_plan_and_batch_scripts(tmp_path):
    plan = slurm_submit.job_plan(["--demo", "--cache-dir", "my cache", "--rebuild"], shards=3, python="/py")
    assert [job["name"] for job in plan] == ["prepare", "features", "submission"]
    assert "--rebuild" in plan[0]["command"], "the store is emptied once, by the prepare job"
    assert all("--rebuild" not in job["command"] for job in plan[1:])
    assert plan[1]["command"][-2:] == ["--shard", "${SLURM_ARRAY_TASK_ID}/3"] and plan[1]["array"] == 3
    script = slurm_submit.batch_script("features", plan[1]["command"], workdir=tmp_path, logs=tmp_path / "logs",
                                       options={"cpus-per-task": "2", "mem": "4G"}, array_size=3)
    assert "#SBATCH --array=0-2" in script and "#SBATCH --mem=4G" in script
    assert "#SBATCH --ntasks=1" in script, "sbatch refuses --gpus-per-task without --ntasks"
    assert "'my cache'" in script, "arguments are shell-quoted"
    assert "--shard ${SLURM_ARRAY_TASK_ID}/3" in script, "the task id is left for the shell to expand"
    for refused in (["--demo", "--no-cache"], ["--demo", "--stage", "features"], ["--demo", "--shard", "0/2"]):
        with pytest.raises(SystemExit):
            slurm_submit.job_plan(refused, shards=2)


def _layout(root: Path, train_class: str = "var16") -> Path:
    """train/<class>/, val/var16/ and test/, one black image each; the test folder."""
    from PIL import Image

    for split in (f"train/{train_class}", "val/var16", "test"):
        (root / split).mkdir(parents=True)
        Image.new("RGB", (64, 64)).save(root / split / "x.png")
    return root / "test"


def test_an_abbreviated_option_is_refused_not_passed_to_every_job():
    """``--rebui`` would reach every job of the array, each emptying the shared store."""
    with pytest.raises(SystemExit) as stop:
        slurm_submit.job_plan(["--demo", "--rebui"], shards=2)
    assert stop.value.code == 2
    with pytest.raises(SystemExit):
        submission.build_parser().parse_args(["--demo", "--cache", "c"])


def test_what_the_jobs_would_stop_on_is_refused_before_submitting(tmp_path, capsys):
    test_dir = _layout(tmp_path / "data")
    (tmp_path / "lone" / "test").mkdir(parents=True)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "vae_ch160v4096z32.pth").write_bytes(b"")
    (tmp_path / "l.csv").write_text("image_name,label\n")
    (tmp_path / "s_report").write_text("")  # a file where the default report folder would go
    refused = {"give --test FOLDER": ["--out", "x.csv"],
               f"--test {tmp_path / 'nope'}: no such folder": ["--test", str(tmp_path / "nope")],
               f"--val {tmp_path / 'data' / 'val2'}: no such folder": ["--test", str(test_dir), "--val", str(tmp_path / "data" / "val2")],
               f"--train {tmp_path / 'lone' / 'train'} (beside --test): no such folder": ["--test", str(tmp_path / "lone" / "test")],
               "--labels": ["--test", str(test_dir), "--labels", str(tmp_path / "labels.csv")],
               "weight file not found: ": ["--test", str(test_dir), "--weights-dir", str(weights)],
               # the prepare job would refuse to replace a folder that is not a demo Dataset
               "is not a demo Dataset": ["--demo", "--dataset", str(tmp_path / "data")],
               # the last job checks its outputs as submission.py does: said before the array runs
               "is the --labels file": ["--test", str(test_dir), "--labels", str(tmp_path / "l.csv"), "--out", str(tmp_path / "l.csv")],
               "is in the input folder": ["--test", str(test_dir), "--out", str(tmp_path / "x.csv"),
                                          "--report-dir", str(test_dir / "report")],
               "the report folder (default <out>_report": ["--test", str(test_dir), "--out", str(tmp_path / "s.csv")]}
    for message, args in refused.items():
        with pytest.raises(SystemExit) as stop:
            slurm_submit.job_plan(args, shards=2)
        assert stop.value.code == 2 and message in capsys.readouterr().err, args
    assert len(slurm_submit.job_plan(["--test", str(test_dir)], shards=2)) == 3


def test_sbatch_options_the_script_sets_are_refused_and_values_quoted(tmp_path, capsys, monkeypatch):
    import shlex

    monkeypatch.chdir(tmp_path)
    logs = tmp_path / "slurm logs"
    for taken in ("array=0-3", "dependency=afterok:1", "output=x.out", "chdir=/", "job-name=x", "ntasks=2", "dep=afterany:1"):
        with pytest.raises(SystemExit) as stop:
            slurm_submit.main(["--dry-run", "--logs", str(logs), "--sbatch-option", taken, "--", "--demo"])
        assert stop.value.code == 2 and "is set by this script" in capsys.readouterr().err, taken
    assert slurm_submit.main(["--dry-run", "--logs", str(logs), "--sbatch-option", "comment=two words", "--", "--demo"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [shlex.split(line)[-1] for line in printed] == [str(logs / f"{job}.sbatch") for job in ("prepare", "features", "submission")]
    assert "#SBATCH --comment='two words'" in (logs / "prepare.sbatch").read_text()


def test_stage_features_refuses_what_would_lose_work(tmp_path):
    for bad in (["--stage", "features", "--rebuild"], ["--stage", "features", "--no-cache"], ["--shard", "0/2"]):
        with pytest.raises(SystemExit) as stop:
            submission.main(["--test", str(tmp_path)] + bad)
        assert stop.value.code == 2


def test_jobs_of_an_array_do_not_each_build_what_prepare_builds_once(tiny_dataset, small_zoo_dir, tmp_path):
    with pytest.raises(InputError, match="--stage prepare"):  # the demo Dataset
        submission.main(["--demo", "--dataset", str(tmp_path / "none"), "--stage", "features", "--shard", "0/2"])
    assert not (tmp_path / "none").exists()
    with pytest.raises(FileNotFoundError, match="--stage prepare"):  # inverse decoders: no weights ship them
        submission.main(["--test", str(tiny_dataset / "test"), "--weights-dir", str(small_zoo_dir),
                         "--cache-dir", str(tmp_path / "cache"), "--stage", "features", "--shard", "0/2"])
    assert not (tmp_path / "cache" / "inv_decoder").exists(), "nothing was fine-tuned"


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slurm_demo") / "Dataset"
    make_demo_dataset.build(out, seed=1, counts={"train": 3, "val": 2, "test": 2}, progress=False)
    return out


# --- a real cluster -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _slurm_conf(folder: Path, node: str, user: str) -> str:
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 1024
    return "\n".join([
        "ClusterName=iarprovtest", f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        "AuthType=auth/none", "CredType=cred/none", f"SlurmUser={user}", f"SlurmdUser={user}",
        f"StateSaveLocation={folder}/state", f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid", f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log", f"SlurmdLogFile={folder}/slurmd.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SwitchType=switch/none", "MpiDefault=none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "ReturnToService=2",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none", "MinJobAge=3600",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP", "",
    ])


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A one-node Slurm cluster on localhost (auth/none); yields the environment its commands need."""
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurmctld slurmd slurm-client")
    if os.geteuid() != 0:
        pytest.skip("slurmd runs jobs as root here: run the tests as root for the cluster test")
    folder = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_slurm_conf(folder, node, "root"))
    env = dict(os.environ, SLURM_CONF=str(conf))
    subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True)
    subprocess.run(["slurmd", "-f", str(conf), "-N", node], env=env, check=True)
    try:
        deadline = time.monotonic() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout:
            if time.monotonic() > deadline:
                pytest.fail("the Slurm node never became idle:\n" + (folder / "slurmd.log").read_text()[-2000:])
            time.sleep(0.5)
        yield env
    finally:
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            try:
                os.kill(int((folder / pid_file).read_text()), 15)
            except (OSError, ValueError):
                pass


def _job_states(job_ids, env, timeout_s: float = 600) -> list:
    """Wait until the jobs have left the queue; each job's states (an array job's, one per task record)."""
    deadline = time.monotonic() + timeout_s
    while subprocess.run(["squeue", "-h", "-j", ",".join(job_ids)], env=env, capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "the jobs did not leave the queue in time"
        time.sleep(1)
    return [re.findall(r"JobState=(\w+)", subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True,
                                                         text=True).stdout) for job in job_ids]


def _submitted(printed: str) -> tuple:
    return re.search(r"prepare (\d+), features (\d+) \(2 tasks\), submission (\d+)", printed).groups()


def test_slurm_array_fills_the_store_and_the_last_job_writes_the_submission(slurm_cluster, tiny_dataset, tmp_path, monkeypatch):
    from feature_extractor import EXTRACTOR_NAME, EXTRACTOR_VERSION, FeatureExtractor

    dataset = tiny_dataset
    cache, logs, out = tmp_path / "cache", tmp_path / "logs", tmp_path / "submission.csv"
    args = ["--test", str(dataset / "test"), "--cache-dir", str(cache), "--out", str(out), "--batch-size", "8"]
    monkeypatch.setenv("SLURM_CONF", slurm_cluster["SLURM_CONF"])
    monkeypatch.chdir(tmp_path)
    printed = subprocess.run([sys.executable, str(ROOT / "scripts" / "slurm_submit.py"), "--shards", "2",
                              "--cpus-per-task", "1", "--logs", str(logs), "--"] + args,
                             env=slurm_cluster, capture_output=True, text=True, check=True).stdout
    states = _job_states(_submitted(printed), slurm_cluster)
    journal = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(logs.glob("*.out")))
    assert all(found and set(found) == {"COMPLETED"} for found in states), f"job states {states}\n{journal}"

    images = sorted(p for split in ("train", "val", "test") for p in (dataset / split).rglob("*.png"))
    keys = sorted({file_sha256(p) for p in images})
    shard_lines = [re.search(r"shard (\d)/2: the features of (\d+) of (\d+) images", p.read_text())
                   for p in sorted(logs.glob("features-*.out"))]
    assert sorted((int(m[1]), int(m[2]), int(m[3])) for m in shard_lines) == [
        (0, len(shard_keys(keys, 0, 2)), len(keys)), (1, len(shard_keys(keys, 1, 2)), len(keys))]
    final_log = next(logs.glob("submission-*.out")).read_text()
    assert f"features: {len(keys)} images cached, 0 to compute" in final_log, final_log[-2000:]

    # the array's rows are exactly those one local process computes, in batches of another size
    local = FeatureExtractor(inv_root=tmp_path / "inv", cache_dir=tmp_path / "local", batch_size=5, progress=False)
    image_keys = [file_sha256(p) for p in images]
    here = local.features(images, keys=image_keys)
    there = FeatureStore(cache / "features", EXTRACTOR_NAME, EXTRACTOR_VERSION, local.weights_digest).read(image_keys)
    there = there.drop(columns=[c for c in there.columns if c.startswith("scored_")]).set_axis(here.index)
    held = there.notna()  # the array's scoring gate may have left out some family's variant features
    assert held.filter(regex="^(VAR|RAR)_").all(axis=None) and held.any(axis=None)
    pd.testing.assert_frame_equal(there.where(held).astype(float), here.where(held).astype(float), rtol=0, atol=0)

    # the same command here, on the cache the array filled: no feature computed, the same bytes
    shards = sorted((cache / "features").rglob("*.parquet"))
    again = tmp_path / "again.csv"
    assert submission.main(args[:-4] + ["--out", str(again), "--batch-size", "8"]) == 0
    assert again.read_bytes() == out.read_bytes()
    assert sorted((cache / "features").rglob("*.parquet")) == shards


def test_a_failed_prepare_job_cancels_the_jobs_after_it(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    logs = tmp_path / "logs"
    test_dir = _layout(tmp_path / "data", train_class="cats")  # passes the checks before submitting, not the job's
    printed = subprocess.run([sys.executable, str(ROOT / "scripts" / "slurm_submit.py"), "--shards", "2", "--cpus-per-task", "1",
                              "--logs", str(logs), "--", "--test", str(test_dir)],
                             env=slurm_cluster, capture_output=True, text=True, check=True).stdout
    states = _job_states(_submitted(printed), slurm_cluster, timeout_s=120)  # dependents left pending would time out
    assert states[0] == ["FAILED"] and set(states[1]) == {"CANCELLED"} and states[2] == ["CANCELLED"], states
    assert "cats: unknown class folder" in next(logs.glob("prepare-*.out")).read_text()


def test_a_refused_job_leaves_nothing_queued(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "slurm_submit.py"), "--shards", "5000", "--cpus-per-task", "1",
                           "--logs", str(tmp_path / "logs"), "--", "--test", str(_layout(tmp_path / "data"))],  # an array over MaxArraySize
                          env=slurm_cluster, capture_output=True, text=True)
    assert done.returncode != 0 and "sbatch refused" in done.stderr, done.stderr
    cancelled = re.search(r"cancelled the jobs already submitted \((\d+)\)", done.stderr)
    assert cancelled, done.stderr
    assert _job_states([cancelled[1]], slurm_cluster, timeout_s=60) == [["CANCELLED"]]


def test_too_many_fine_tuning_images_are_refused_before_submitting(tmp_path, capsys):
    """``--inv-decoder-images`` above ``cli.INV_DECODER_MAX_IMAGES`` stops ``submission.py`` at once;
    through ``slurm_submit.py`` it must not queue three jobs whose prepare job then stops on it."""
    from cli import INV_DECODER_MAX_IMAGES

    test_dir = _layout(tmp_path)
    with pytest.raises(SystemExit) as stop:
        slurm_submit.job_plan(["--test", str(test_dir), "--inv-decoder-images", str(INV_DECODER_MAX_IMAGES + 1)], shards=2)
    assert stop.value.code == 2
    assert f"at most {INV_DECODER_MAX_IMAGES:,}" in capsys.readouterr().err
