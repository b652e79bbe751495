"""The Slurm executor: one job per stage that is not done, submitted through submitit.

Each job depends on the jobs of its stage's unfinished dependencies (``--dependency=afterok``;
``--kill-on-invalid-dep=yes`` cancels the dependents of a failed stage instead of leaving them
pending forever). In the job, ``StageJob`` runs the stage's command like the local executor
(``run_stage``) and records the job id. A job that Slurm preempts or that reaches its time limit
gets submitit's signal (USR2), is requeued (``checkpoint``), and on its next start continues the
stage with ``--resume`` from the stage's last checkpoint. A multi-node stage runs one task per
node, each starting torchrun (pretraining) or Detectron2's launcher (detection) with its node
rank, the first node as rendezvous host and a port of the job's own.
"""

import os
import shlex

import submitit

from .local import ROOT, run_stage
from .plan import RUN_KINDS, Plan
from .spec import load_study
from .state import all_states, changed_problem, log_path, read_record, study_lock, write_record


def rendezvous_port(job_id):
    """The port of a multi-node stage's rendezvous (torchrun's c10d store, Detectron2's
    --dist-url) on its first node: one per job, since jobs that share a node each bind one (with
    one port for all, the second detection stage on the same nodes stopped with EADDRINUSE, and
    a rank could join another job's rendezvous). 20000-29999, below Linux's ephemeral ports;
    jobs 10,000 ids apart share it."""
    return 20000 + int(job_id) % 10000


class StageJob(submitit.helpers.Checkpointable):
    """What a Slurm job runs: one stage of a study, resumed when the job was requeued."""

    def __init__(self, study_path, stage_id):
        self.study_path, self.stage_id = study_path, stage_id

    def __call__(self):
        env = submitit.JobEnvironment()
        plan = Plan(load_study(self.study_path))
        stage = plan.by_id[self.stage_id]
        done, _ = plan.check(stage)
        if done:  # requeued after the stage finished
            return "done"
        node = (env.num_nodes, env.node, env.hostnames[0], rendezvous_port(env.job_id), env.job_id)
        resume = stage.kind in RUN_KINDS and plan.started(stage)
        ok, error = run_stage(
            plan,
            stage,
            resume,
            executor="slurm",
            job_id=env.job_id,
            node=node,
            record=env.global_rank == 0,
        )
        if not ok:
            raise RuntimeError(f"{stage.id}: {error} (log {log_path(plan, stage, env.node)})")
        return "done"

    def checkpoint(self, *args, **kwargs):
        # Nothing to save here: the tools checkpoint on their own; the requeued job resumes.
        return submitit.helpers.DelayedSubmission(StageJob(self.study_path, self.stage_id))


def _executor(plan, stage, dependencies):
    study, res = plan.study, stage.resources
    executor = submitit.AutoExecutor(
        folder=os.path.join(plan.root, "slurm", "%j"),
        cluster="slurm",
        slurm_max_num_timeout=study.slurm["max_num_timeout"],
    )
    extra = {"kill-on-invalid-dep": "yes", **(study.slurm.get("additional_parameters") or {})}
    if dependencies:
        extra["dependency"] = "afterok:" + ":".join(dependencies)
    params = dict(
        name=f"{study.name}:{stage.id}",
        nodes=res["nodes"],
        tasks_per_node=1,
        cpus_per_task=res["cpus_per_task"],
        timeout_min=res["timeout_min"],
        slurm_signal_delay_s=study.slurm["signal_delay_s"],
        slurm_additional_parameters=extra,
        # The job unpickles StageJob: the project must be importable wherever it starts.
        slurm_setup=[f"export PYTHONPATH={shlex.quote(ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}"],
    )
    if res["gpus_per_node"]:
        params["gpus_per_node"] = res["gpus_per_node"]
    if res.get("mem_gb"):
        params["mem_gb"] = res["mem_gb"]
    if study.slurm.get("partition"):
        params["slurm_partition"] = study.slurm["partition"]
    if study.slurm.get("account"):
        params["slurm_account"] = study.slurm["account"]
    executor.update_parameters(**params)
    return executor


def submit_slurm(plan, resume=False, out=print):
    """Submit a job for every stage that is not done (nor already queued or running); return 0
    when every stage is done or submitted, else 1 (the stages that could not be are listed)."""
    with study_lock(plan):
        states = all_states(plan)
        jobs, problems, submitted = {}, {}, 0
        for stage in plan.stages:
            state, detail = states[stage.id]
            if state == "done":
                continue
            if state in ("running", "queued"):
                jobs[stage.id] = str(read_record(plan, stage)["job_id"])
                out(f"{stage.id}: already {state} ({detail})")
                continue
            blocked = [d for d in stage.deps if d in problems]
            if blocked:
                problems[stage.id] = f"not submitted: {', '.join(blocked)} cannot run"
            elif state == "changed":
                problems[stage.id] = changed_problem(detail)
            elif stage.kind in RUN_KINDS and plan.started(stage) and not resume:
                problems[stage.id] = (
                    f"interrupted earlier ({state}); submit with --resume to continue it"
                )
            if stage.id in problems:
                out(f"{stage.id}: {problems[stage.id]}")
                continue
            deps = [jobs[d] for d in stage.deps if d in jobs]
            job = _executor(plan, stage, deps).submit(StageJob(plan.study.path, stage.id))
            jobs[stage.id] = str(job.job_id)
            write_record(
                plan,
                stage,
                command=plan.command(stage),
                identity=plan.identity(stage),
                status="submitted",
                executor="slurm",
                job_id=str(job.job_id),
                log=log_path(plan, stage),
                rc=None,
                error=None,
                slurm_output=str(job.paths.stdout),
            )
            submitted += 1
            out(
                f"{stage.id}: Slurm job {job.job_id}"
                + (f" (afterok:{':'.join(deps)})" if deps else "")
            )
        if not submitted and not jobs and not problems:
            out(f"nothing to do: all {len(plan.stages)} stages of study {plan.study.name} are done")
        elif submitted:
            out(
                f"submitted {submitted} job(s); follow them with: tools/study.py --config-file "
                f"{plan.study.path} --status"
            )
        return 1 if problems else 0
