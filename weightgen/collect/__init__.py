"""Collection: one LoRA trained per (concept, seed) job on the frozen base, vetted, written as a
one-sample shard with a ledger record, then merged by the finaliser into the data set.

`job` trains one job (pure, in any process); `ledger` records outcomes on the storage; `driver`
plans the jobs and fans them out over Ray; `finalize` packs shards, statistics and the manifest.
"""

from weightgen.collect.driver import CollectSummary, PlannedJob, collect, plan
from weightgen.collect.finalize import CollectError, finalize
from weightgen.collect.job import Job, lora_template, plan_jobs, run_job, vet
from weightgen.collect.ledger import DONE, FAILED, REJECTED, Ledger

__all__ = [
    "DONE",
    "FAILED",
    "REJECTED",
    "CollectError",
    "CollectSummary",
    "Job",
    "Ledger",
    "PlannedJob",
    "collect",
    "finalize",
    "lora_template",
    "plan",
    "plan_jobs",
    "run_job",
    "vet",
]
