"""One task's share of the inputs when annotation is spread over a cluster (a SLURM array, several nodes).

``K`` tasks run the same command, each with ``--task-index I --task-count K`` or, in a SLURM job
array, with ``I = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` and ``K = SLURM_ARRAY_TASK_COUNT``.
The inputs are ordered by file name (unique among the inputs: each output keeps its input's name),
which does not depend on the order a shell expands a glob in, nor on where a node mounts the data,
and task ``I`` takes every ``K``-th input from the ``I``-th: ``sorted[I::K]``. The shares are
disjoint and together hold every input once, so ``K`` tasks write exactly the outputs of one run.
"""
import os
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence

from .extract import AnnotationError

SLURM_VARIABLES = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_COUNT")


@dataclass(frozen=True)
class Task:
    """Task ``index`` of ``count`` (0-based); ``source`` says where the numbers came from."""
    index: int = 0
    count: int = 1
    source: str = "one task"


def _slurm_task(env: Mapping[str, str]) -> Optional[Task]:
    """The task of a SLURM job array from its variables, None outside one; ``AnnotationError`` when
    they do not describe a contiguous array (a step or a list of ids would leave shares undone)."""
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    given = {name: env.get(name) for name in SLURM_VARIABLES}
    shown = ", ".join(f"{name}={value}" for name, value in given.items() if value is not None)
    try:
        task_id, low, high, count = (int(given[name]) for name in SLURM_VARIABLES)
    except (TypeError, ValueError):
        raise AnnotationError(f"SLURM array variables incomplete or not integers ({shown}); pass --task-index "
                              "and --task-count") from None
    step = env.get("SLURM_ARRAY_TASK_STEP", "1")
    if count < 1 or high - low + 1 != count or step != "1" or not low <= task_id <= high:
        raise AnnotationError(
            f"the SLURM array is not one contiguous range of task ids ({shown}"
            + (f", SLURM_ARRAY_TASK_STEP={step}" if step != "1" else "") + "): with a step or a list of ids some "
            "shares of the inputs would never be annotated. Submit with --array=0-<K-1> (a % limit is fine) or "
            "pass --task-index and --task-count")
    return Task(task_id - low, count, f"SLURM_ARRAY_TASK_ID={task_id} - SLURM_ARRAY_TASK_MIN={low}, "
                                      f"SLURM_ARRAY_TASK_COUNT={count}")


def resolve_task(index: Optional[int], count: Optional[int], env: Mapping[str, str] = os.environ) -> Task:
    """This process's task: ``--task-index`` / ``--task-count`` when given (both), else the SLURM
    array's, else the only task. ``AnnotationError`` for values that do not make a share."""
    if (index is None) != (count is None):
        raise AnnotationError("--task-index and --task-count go together")
    if index is None:
        return _slurm_task(env) or Task()
    if count < 1 or not 0 <= index < count:
        raise AnnotationError(f"--task-index {index} --task-count {count}: need --task-count >= 1 and "
                              "0 <= --task-index < --task-count")
    return Task(index, count, "--task-index/--task-count")


def share(inputs: Sequence[str], task: Task) -> List[str]:
    """Task ``task``'s inputs: every ``count``-th of the inputs ordered by file name, from the
    ``index``-th, in the order given."""
    ordered = sorted(range(len(inputs)), key=lambda i: (os.path.basename(inputs[i]), inputs[i]))
    mine = set(ordered[task.index::task.count])
    return [path for i, path in enumerate(inputs) if i in mine]


def describe(task: Task, mine: Sequence[str], total: int) -> str:
    """One line: which task this is, where that came from, and its share."""
    if task.count == 1:
        return f"task: the only one, all {total} inputs"
    head = f"task {task.index} of {task.count} (0-based; {task.source}): "
    if not mine:
        return head + (f"no inputs: {task.count} tasks for {total} inputs leave tasks {total} to {task.count - 1} "
                       "without a share")
    names = sorted(os.path.basename(p) for p in mine)
    listed = ", ".join(names[:3]) + (f", ..., {names[-1]}" if len(names) > 3 else "")
    positions = ", ".join(str(task.index + k * task.count) for k in range(min(2, len(mine))))
    return (head + f"{len(mine)} of {total} inputs, at position(s) {positions}"
            + (", ..." if len(mine) > 2 else "") + f" of the inputs sorted by file name: {listed}")
