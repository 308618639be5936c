"""Jobs of the bench: asset jobs per workflow or batch, and the rerun job.

`jobs.bench_runner` (what `wtb bench` runs) is not a job definition and is imported on its own.
"""

from jobs.asset_jobs import batch_runs_job, compare_job, prepare_workflow_job
from jobs.rerun import rerun_job

# What `wtb bench` runs, in this order, for a workflow.
ASSET_JOBS = [prepare_workflow_job, batch_runs_job, compare_job]

__all__ = ["ASSET_JOBS", "batch_runs_job", "compare_job", "prepare_workflow_job", "rerun_job"]
