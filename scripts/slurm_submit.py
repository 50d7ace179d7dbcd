"""Run the main job on a Slurm cluster, the feature pass spread over an array of jobs.

    python scripts/slurm_submit.py --shards 8 [--cpus-per-task 4] [--mem 16G] [--time 4:00:00]
        [--partition P] [--gpus-per-task 1] [--logs runs/slurm] [--dry-run] -- SUBMISSION_ARGS …

    e.g.  python scripts/slurm_submit.py --shards 16 --gpus-per-task 1 -- \\
              --test /shared/Dataset/test --weights-dir /shared/weights --cache-dir /shared/cache --device cuda

Submits three jobs, each a ``submission.py`` run with the same SUBMISSION_ARGS (anything
``submission.py`` takes, options spelled out in full). They are checked before anything is
submitted: their syntax, ``--test`` or ``--demo`` given, the folders they name (``--test`` and the
``train/`` and ``val/`` it implies or ``--train`` / ``--val``, ``--weights-dir`` with every weight
file of both families, ``--labels``) present — seen from here, so give paths the nodes see the same:

1. **prepare** (``--stage prepare``): checks the inputs, builds the demo Dataset if ``--demo``
   needs it, fine-tunes missing inverse decoders, trains missing variant nets and computes the full features of the scoring
   gate's sample of training images (``provenance.ScoringGate``) — once, not in every job of the array;
2. **features** (``--stage features --shard K/N``), an array of ``--shards`` tasks: task K
   computes the features of part K of the images, split by content hash
   (:func:`feature_store.shard_keys`), into the shared content-addressed feature store under
   ``--cache-dir`` (each task fits the same scoring gate on the cached sample first and leaves out
   what it does not need). Every task writes shards of its own, so they never touch the same file; the
   cache folder must be on a filesystem all nodes see;
3. **submission** (the plain run): every feature is cached, so it only trains, predicts and writes
   ``submission.csv`` and the report — the same bytes as the same command run on one machine.

Each job starts when the one before has ended well (``afterok``); if one fails, the jobs after it
are cancelled, and a resubmission computes only the features still missing. ``--rebuild`` goes to
the prepare job only (it empties the store once); ``--no-cache`` is refused. Batch scripts and logs
go to ``--logs``; ``--dry-run`` writes the scripts and prints the ``sbatch`` commands without
submitting anything; if ``sbatch`` refuses a job, the ones already queued are cancelled. Jobs run
in the current directory with this Python interpreter, one task each (``--ntasks=1``, which
``--gpus-per-task`` needs). ``--sbatch-option KEY=VALUE`` adds any other ``#SBATCH`` option but
those this script sets (:data:`RESERVED_OPTIONS`).
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

__all__ = ["batch_script", "job_plan", "sbatch_options", "submit", "main", "RESERVED_OPTIONS"]

SHARD_VARIABLE = "${SLURM_ARRAY_TASK_ID}"
# the #SBATCH options batch_script and submit set themselves (workdir: chdir's old name)
RESERVED_OPTIONS = ("array", "chdir", "workdir", "dependency", "job-name", "ntasks", "output")


def batch_script(name: str, command: Sequence[str], *, workdir: Path, logs: Path, options: Dict[str, str],
                 array_size: Optional[int] = None) -> str:
    """An ``sbatch`` script running ``command`` (shell-quoted; :data:`SHARD_VARIABLE` is left to expand)
    as one task; ``options``' values are quoted as sbatch reads ``#SBATCH`` lines (as a shell would)."""
    output = logs / (f"{name}-%A_%a.out" if array_size else f"{name}-%j.out")
    lines = ["#!/bin/bash", f"#SBATCH --job-name=iarprov-{name}", f"#SBATCH --chdir={shlex.quote(str(workdir))}",
             f"#SBATCH --output={shlex.quote(str(output))}", "#SBATCH --ntasks=1"]  # --gpus-per-task needs --ntasks
    if array_size:
        lines.append(f"#SBATCH --array=0-{array_size - 1}")
    lines += [f"#SBATCH --{key}={shlex.quote(value)}" for key, value in options.items()]
    words = [word if SHARD_VARIABLE in word else shlex.quote(word) for word in command]
    lines += ["set -euo pipefail", "exec " + " ".join(words), ""]
    return "\n".join(lines)


def _missing_inputs(parsed: argparse.Namespace) -> List[str]:
    """What the jobs would stop on at once, said here instead: no ``--test`` nor ``--demo``, a
    folder or file they name that does not exist, outputs the last job would refuse
    (:func:`run_inputs.check_run_outputs`), a weight file missing from ``--weights-dir``.
    Those :func:`run_inputs.check_before_work` refuses are refused in its words; its ``--device``
    check is left to the jobs, whose nodes may have what this one has not."""
    from cli import InputError, check_weight_files
    from models.checkpoints import CheckpointError
    from run_inputs import NO_TEST_NOR_DEMO, check_run_outputs, input_folders

    if parsed.test is None and not parsed.demo:
        return [NO_TEST_NOR_DEMO]
    problems = []
    folders = {"--train": parsed.train, "--val": parsed.val}
    if parsed.test is not None:  # without it, --demo's Dataset is built by the prepare job
        folders = dict(zip(("--test", "--train", "--val"), input_folders(parsed.test, parsed.train, parsed.val, parsed.dataset)))
    for option, folder in folders.items():
        given = option == "--test" or getattr(parsed, option[2:]) is not None
        if folder is not None and not folder.is_dir() and (given or parsed.test.is_dir()):  # not thrice for one typo
            problems.append(f"{option} {folder}{'' if given else ' (beside --test)'}: no such folder")
    if parsed.labels is not None and not parsed.labels.is_file():
        problems.append(f"--labels {parsed.labels}: no such file")
    if parsed.demo:  # a folder that is not a demo Dataset is never replaced: the prepare job would stop on it
        from make_demo_dataset import demo_dataset_outdated

        try:
            demo_dataset_outdated(parsed.dataset)
        except InputError as err:
            problems.append(str(err))
    try:  # the last job would stop on them, after the whole array
        check_run_outputs(parsed.out, parsed.report_dir, parsed.labels, parsed.demo,
                          input_folders(parsed.test, parsed.train, parsed.val, parsed.dataset), parsed.dataset)
    except InputError as err:
        problems.append(str(err))
    try:
        check_weight_files(parsed.weights_dir)
    except CheckpointError as err:
        problems.append(str(err))
    return problems


def job_plan(submission_args: Sequence[str], shards: int, python: str = sys.executable) -> List[dict]:
    """The three jobs — name, command, array size — for ``submission.py`` arguments ``submission_args``,
    refused with the parser's message (status 2) if they could not run (:func:`_missing_inputs`)."""
    import submission

    parser = submission.build_parser()  # allow_abbrev=False: --rebuild is only ever spelled out
    parser.prog, parser.usage = "submission.py (the arguments after --)", argparse.SUPPRESS  # the message, not 20 lines of usage
    parsed = parser.parse_args(list(submission_args))  # exits with the parser's message
    if parsed.no_cache:
        parser.error("--no-cache: the array's features reach the last job only through the cache; leave it out")
    if parsed.stage != "all" or parsed.shard is not None:
        parser.error("--stage and --shard are set by this script; leave them out of SUBMISSION_ARGS")
    problems = _missing_inputs(parsed)
    if problems:
        parser.error("; ".join(problems) + " (nothing was submitted)")
    base = [python, str(ROOT / "submission.py")]
    kept = [a for a in submission_args if a != "--rebuild"]  # the store is emptied once, before the array
    return [
        {"name": "prepare", "command": base + list(submission_args) + ["--stage", "prepare"], "array": None},
        {"name": "features", "command": base + kept + ["--stage", "features", "--shard", f"{SHARD_VARIABLE}/{shards}"],
         "array": shards},
        {"name": "submission", "command": base + kept, "array": None},
    ]


def sbatch_options(items: Sequence[str]) -> Dict[str, str]:
    """``--sbatch-option KEY=VALUE`` items as a dict; a ``ValueError`` for an item that is not
    KEY=VALUE, or whose KEY is one of :data:`RESERVED_OPTIONS` (or a prefix of one, which sbatch
    would take for it)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ValueError(f"--sbatch-option {item!r}: expected KEY=VALUE")
        taken = [name for name in RESERVED_OPTIONS if name.startswith(key)]
        if taken:
            raise ValueError(f"--sbatch-option {item!r}: --{taken[0]} is set by this script for every job; leave it out")
        options[key] = value
    return options


def submit(script: Path, after: Optional[str] = None) -> str:
    """``sbatch`` a script (after job ``after`` has ended well); its job id."""
    command = ["sbatch", "--parsable"]
    if after:
        command += [f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes"]
    done = subprocess.run(command + [str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sbatch refused {script}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip().split(";")[0]


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    own, submission_args = argv[:split], argv[split + 1:]
    from cli import at_least

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=at_least(1), default=4, help="feature jobs in the array (default 4)")
    parser.add_argument("--cpus-per-task", type=at_least(1), default=2,
                        help="CPUs of each job (default 2); a demo-zoo job runs one feature process per CPU")
    parser.add_argument("--mem", help="memory per job, e.g. 16G")
    parser.add_argument("--time", help="time limit per job, e.g. 4:00:00")
    parser.add_argument("--partition", help="partition every job runs in (default: the cluster's default partition)")
    parser.add_argument("--account", help="account every job is charged to (default: your Slurm default account)")
    parser.add_argument("--gpus-per-task", type=at_least(1), help="GPUs per job (pass --device cuda in SUBMISSION_ARGS)")
    parser.add_argument("--sbatch-option", action="append", default=[], metavar="KEY=VALUE",
                        help="any other #SBATCH option for every job, e.g. --sbatch-option qos=long (repeatable)")
    parser.add_argument("--logs", type=Path, default=Path("runs/slurm"), help="batch scripts and job logs (default runs/slurm)")
    parser.add_argument("--dry-run", action="store_true", help="write the batch scripts and print the sbatch commands only")
    args = parser.parse_args(own)
    if args.shards < 1 or args.cpus_per_task < 1:
        parser.error("--shards and --cpus-per-task must be at least 1")
    if not submission_args:
        parser.error("give the submission.py arguments after --, e.g. -- --test Dataset/test (or -- --demo)")
    plan = job_plan(submission_args, args.shards)
    options = {"cpus-per-task": str(args.cpus_per_task)}
    for key in ("mem", "time", "partition", "account", "gpus_per_task"):
        if getattr(args, key) is not None:
            options[key.replace("_", "-")] = str(getattr(args, key))
    try:
        options.update(sbatch_options(args.sbatch_option))
    except ValueError as err:
        parser.error(str(err))
    if not args.dry_run and shutil.which("sbatch") is None:
        raise SystemExit("sbatch not found: run this on a Slurm login node (or --dry-run to see the batch scripts)")
    logs = args.logs.resolve()
    logs.mkdir(parents=True, exist_ok=True)
    previous: Optional[str] = None
    ids = {}
    for job in plan:
        script = logs / f"{job['name']}.sbatch"
        script.write_text(batch_script(job["name"], job["command"], workdir=Path.cwd(), logs=logs, options=options,
                                       array_size=job["array"]))
        if args.dry_run:
            dependency = [f"--dependency=afterok:<{previous}>", "--kill-on-invalid-dep=yes"] if previous else []
            print(shlex.join(["sbatch", "--parsable", *dependency, str(script)]))
            previous = job["name"]
            continue
        try:
            previous = ids[job["name"]] = submit(script, previous)
        except SystemExit:
            if ids:  # no half-submitted pipeline: cancel the jobs already queued
                subprocess.run(["scancel", *ids.values()], capture_output=True)
                print(f"cancelled the jobs already submitted ({', '.join(ids.values())})", file=sys.stderr)
            raise
    if not args.dry_run:
        print(f"submitted: prepare {ids['prepare']}, features {ids['features']} ({args.shards} tasks), "
              f"submission {ids['submission']}; logs in {logs}")
        print(f"watch: squeue -j {','.join(ids.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
