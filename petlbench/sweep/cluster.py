"""What a Slurm cluster can hold and why its jobs wait, read from `sinfo` and `squeue`.

Slurm queues a job that no node of its partition can hold (more CPUs than any node, say) and leaves it
pending forever; a command waiting for it would wait forever too. So `--executor slurm` compares the job
size with the partition's nodes before submitting (`check_fits`), and while it waits it asks squeue why
pending jobs wait (`stuck_jobs`): a reason that cannot resolve by waiting is reported, not waited on.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from petlbench.errors import UserError

# squeue reasons that waiting cannot resolve: the job's request breaks a partition, QOS or account limit.
LIMIT_REASONS = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints",
                 "DependencyNeverSatisfied", "InvalidAccount", "InvalidQOS"}
PER_JOB_LIMIT = re.compile(r"^(QOS|Assoc)\w*(Max\w*PerJob|Min)\w*$")  # QOSMaxCpuPerJobLimit, QOSMinGRES, ...
# Reasons meaning "no node free for it now": hopeless only when no node that is up can hold the job.
NODE_REASONS = {"Resources", "ReqNodeNotAvail"}
DOWN_STATES = ("drain", "down", "fail", "inval", "future")  # sinfo %T prefixes of nodes that take no job
GRES_GPUS = re.compile(r"(?:^|,)gpu(?::[\w.-]+)?:(\d+)")  # gpu:2, gpu:a100:4(S:0-1), per GPU type


@dataclass(frozen=True)
class JobSize:
    """What one job asks for, as `SlurmExecutor` passes it to sbatch (--cpus-per-task, --mem, --gpus-per-node)."""
    cpus: int
    mem_gb: float
    gpus: int = 0

    @property
    def mem_mb(self) -> int:  # as submitit writes --mem: whole GB, or MB for a fraction (Slurm's G is 1024 M)
        return int(self.mem_gb) * 1024 if self.mem_gb == int(self.mem_gb) else int(self.mem_gb * 1024)

    def describe(self) -> str:
        return sizes(self.cpus, self.mem_mb, self.gpus, self.gpus > 0)


@dataclass(frozen=True)
class Node:
    name: str
    partition: str
    cpus: int
    mem_mb: int
    gpus: int
    state: str

    def holds(self, size: JobSize) -> bool:
        return self.cpus >= size.cpus and self.mem_mb >= size.mem_mb and self.gpus >= size.gpus

    def is_up(self) -> bool:
        return not self.state.lower().startswith(DOWN_STATES)


def sizes(cpus: int, mem_mb: int, gpus: int, with_gpus: bool) -> str:
    parts = [f"{cpus} CPU{'s' if cpus != 1 else ''}", f"{round(mem_mb / 1024, 1):g} GB"]
    if with_gpus:
        parts.append(f"{gpus} GPU{'s' if gpus != 1 else ''}")
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def gpu_count(gres: str) -> int:
    """GPUs of a node from sinfo's %G ('(null)', 'gpu:2', 'gpu:a100:2(S:0-1),gpu:v100:2')."""
    return sum(int(n) for n in GRES_GPUS.findall(gres))


def slurm_command(args: list[str]) -> str:
    """Run a Slurm client command; its stdout, or one line naming the command and what it said."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserError(f"--executor slurm: no `{args[0]}` on PATH; run this on a Slurm login node") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"--executor slurm: `{args[0]}` did not answer in 60 s; is the cluster up?") from None
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if line.strip()]
        raise UserError(f"--executor slurm: `{' '.join(args)}` failed: {said[-1] if said else done.returncode}")
    return done.stdout


def read_nodes() -> list[Node]:
    """Every node of every partition (hidden ones too), one entry per node and partition; '*' marks the default."""
    nodes = []
    for line in slurm_command(["sinfo", "-h", "-a", "-N", "-o", "%P|%N|%c|%m|%G|%T"]).splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        partition, name, cpus, mem, gres, state = fields
        try:
            nodes.append(Node(name, partition, int(cpus.rstrip("+")), int(mem.rstrip("+")), gpu_count(gres), state))
        except ValueError:  # a node that reports no size yet: it can hold nothing we know of
            continue
    return nodes


def job_partition(partition: str | None, sbatch: dict) -> str | None:
    """The partition sbatch will use: --partition, the `sbatch` option, then $SBATCH_PARTITION (None: default)."""
    return partition or sbatch.get("partition") or os.environ.get("SBATCH_PARTITION") or None


def partition_nodes(partition: str | None, nodes: list[Node]) -> tuple[str, list[Node]]:
    """(the partition's name, its nodes); the cluster's default partition when `partition` is None."""
    names = list(dict.fromkeys(n.partition for n in nodes))
    if partition is None:
        default = [p for p in names if p.endswith("*")]
        if not default:
            raise UserError(f"--executor slurm: the cluster has no default partition (partitions: "
                            f"{', '.join(names) or 'none'}); pass --partition NAME or set it in a profile")
        partition = default[0].rstrip("*")
    wanted = [p.strip() for p in partition.split(",") if p.strip()]  # sbatch takes a list: the first that can
    known = {p.rstrip("*") for p in names}
    missing = [p for p in wanted if p not in known]
    if missing or not wanted:
        raise UserError(f"--executor slurm: no partition {(missing or [partition])[0]!r} on this cluster "
                        f"(partitions: {', '.join(sorted(known)) or 'none'}); pass --partition NAME or set it in "
                        "a profile")
    return partition, [n for n in nodes if n.partition.rstrip("*") in wanted]


def check_fits(size: JobSize, partition: str | None) -> str:
    """Refuse a job size that no node of the partition can hold, naming the largest node; the partition's name."""
    name, nodes = partition_nodes(partition, read_nodes())
    if any(node.holds(size) for node in nodes):
        return name
    largest = max(nodes, key=lambda n: ((n.cpus >= size.cpus) + (n.mem_mb >= size.mem_mb) + (n.gpus >= size.gpus),
                                        n.cpus, n.mem_mb, n.gpus))
    flags = [flag for flag, short in (("--cpus", largest.cpus < size.cpus), ("--mem-gb", largest.mem_mb < size.mem_mb),
                                      ("--gpus", largest.gpus < size.gpus)) if short]
    raise UserError(f"--executor slurm: a job asks {size.describe()}; the largest node of partition {name} has "
                    f"{sizes(largest.cpus, largest.mem_mb, largest.gpus, size.gpus > 0)} (node {largest.name}); "
                    f"pass a smaller {'/'.join(flags)} or a --slurm-profile that fits")


def pending_reasons(job_ids: list[str]) -> dict[str, str]:
    """squeue's reason (%r) for each of these jobs that is pending (array tasks one by one, as '12_3')."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    try:
        said = slurm_command(["squeue", "-h", "-r", "-t", "PENDING", "-j", ",".join(arrays), "-o", "%i|%r"])
    except UserError:  # squeue failing once (a busy controller) is no reason to stop waiting
        return {}
    wanted, reasons = set(job_ids), {}
    for line in said.splitlines():
        job_id, _, reason = line.strip().partition("|")
        if job_id in wanted:
            reasons[job_id] = reason.strip()
    return reasons


def stuck_jobs(job_ids: list[str], size: JobSize, partition: str) -> dict[str, list[str]]:
    """Pending jobs that cannot start by waiting, grouped by reason (with why, for the node reasons)."""
    stuck: dict[str, list[str]] = {}
    nodes_say = None
    for job_id, reason in pending_reasons(job_ids).items():
        head = reason.split(",")[0].strip()
        if head in LIMIT_REASONS or PER_JOB_LIMIT.match(head):
            stuck.setdefault(f"pending for {reason}", []).append(job_id)
        elif head in NODE_REASONS or " " in head:  # free text: squeue shows a description instead of the code
            if nodes_say is None:
                nodes_say = no_node_up_holds(size, partition)
            if nodes_say:
                stuck.setdefault(f"pending for {reason}; {nodes_say}", []).append(job_id)
    return stuck


def no_node_up_holds(size: JobSize, partition: str) -> str:
    """Why no node of the partition that is up can hold the job ('' when one can, or sinfo cannot tell)."""
    try:
        _, nodes = partition_nodes(partition, read_nodes())
    except UserError:
        return ""
    if any(node.holds(size) and node.is_up() for node in nodes):
        return ""
    down = [f"{node.name} is {node.state}" for node in nodes if node.holds(size)]
    return f"no node of partition {partition} that is up holds {size.describe()}" + (
        f": {', '.join(down[:3])}" if down else "")


def job_list(job_ids: list[str]) -> str:
    """Array tasks in Slurm's notation: ['12_0', '12_1', '12_3'] -> '12_[0-1,3]'."""
    tasks: dict[str, list[int]] = {}
    plain = []
    for job_id in job_ids:
        array, _, task = job_id.partition("_")
        if task.isdigit():
            tasks.setdefault(array, []).append(int(task))
        else:
            plain.append(job_id)
    for array, numbers in tasks.items():
        numbers, spans = sorted(set(numbers)), []
        for n in numbers:
            if spans and n == spans[-1][1] + 1:
                spans[-1][1] = n
            else:
                spans.append([n, n])
        plain.append(f"{array}_[" + ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans) + "]")
    return ", ".join(plain)
