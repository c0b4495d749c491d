"""Class partitions for Multi-Student Distillation (Song et al. 2024, arXiv 2410.23274).

MSD splits the conditions into K disjoint, balanced groups and distils one student per group;
the routing table (class -> student) is what the multi-student model stores. Three ways to
split `num_classes` labels:

- "contiguous": 0..a-1, a..b-1, ... (the paper's default for class labels);
- "random": a seeded permutation cut into balanced pieces;
- "similarity": classes whose teacher class means lie close together share a student
  (greedy, balanced: the class farthest from the others' centroid seeds a group, which takes
  its nearest unassigned classes).

Every method gives groups whose sizes differ by at most one, sorted within and by first class.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

PARTITIONS = ("contiguous", "random", "similarity")


def group_sizes(num_classes: int, num_groups: int) -> list[int]:
    """Balanced group sizes: `num_classes` split into `num_groups` sizes differing by at most one."""
    check_group_count(num_classes, num_groups)
    base, extra = divmod(num_classes, num_groups)
    return [base + (1 if g < extra else 0) for g in range(num_groups)]


def check_group_count(num_classes: int, num_groups: int) -> None:
    """Raise ValueError unless 1 <= num_groups <= num_classes."""
    if num_groups < 1:
        raise ValueError(f"objective.num_students must be >= 1, got {num_groups}")
    if num_groups > num_classes:
        raise ValueError(f"objective.num_students={num_groups} is more than the teacher's {num_classes} classes; "
                         f"every student needs at least one class: choose num_students <= {num_classes}")


def partition_classes(num_classes: int, num_groups: int, method: str = "contiguous", seed: int = 0,
                      class_means: Tensor | None = None) -> list[list[int]]:
    """K disjoint, balanced groups covering 0..num_classes-1 (`class_means` [C, ...] for "similarity")."""
    sizes = group_sizes(num_classes, num_groups)
    if method == "contiguous":
        order = list(range(num_classes))
    elif method == "random":
        order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    elif method == "similarity":
        if class_means is None or class_means.shape[0] != num_classes:
            raise ValueError("partition 'similarity' needs the teacher's class means, one row per class")
        return _sorted_groups(_similarity_groups(class_means.reshape(num_classes, -1).double(), sizes))
    else:
        raise ValueError(f"objective.partition={method!r} is not a partition; choose one of {', '.join(PARTITIONS)}")
    groups, start = [], 0
    for size in sizes:
        groups.append(order[start:start + size])
        start += size
    return _sorted_groups(groups)


def _similarity_groups(means: Tensor, sizes: list[int]) -> list[list[int]]:
    """Greedy balanced clustering of class means [C, D]: farthest remaining class + its nearest neighbours."""
    remaining = list(range(means.shape[0]))
    groups = []
    for size in sorted(sizes, reverse=True):
        centroid = means[remaining].mean(0)
        seed = max(remaining, key=lambda c: (float((means[c] - centroid).norm()), -c))
        distance = {c: float((means[c] - means[seed]).norm()) for c in remaining}
        group = sorted(remaining, key=lambda c: (distance[c], c))[:size]
        groups.append(group)
        remaining = [c for c in remaining if c not in group]
    return groups


def _sorted_groups(groups: list[list[int]]) -> list[list[int]]:
    return sorted((sorted(int(c) for c in g) for g in groups), key=lambda g: g[0])


def check_partition(groups: Sequence[Sequence[int]], num_classes: int) -> None:
    """Raise ValueError unless `groups` are non-empty, disjoint and cover 0..num_classes-1 exactly."""
    seen: list[int] = [c for g in groups for c in g]
    if any(len(g) == 0 for g in groups):
        raise ValueError("every student needs at least one class; the partition has an empty group")
    if sorted(seen) != list(range(num_classes)):
        missing = sorted(set(range(num_classes)) - set(seen))
        repeated = sorted({c for c in seen if seen.count(c) > 1})
        extra = sorted(set(seen) - set(range(num_classes)))
        raise ValueError(f"the groups must split the classes 0..{num_classes - 1} into disjoint parts "
                         f"(missing {missing}, repeated {repeated}, unknown {extra})")


def routing_table(groups: Sequence[Sequence[int]], num_classes: int) -> list[int]:
    """`route[c]` = index of the group (student) that owns class c."""
    check_partition(groups, num_classes)
    route = [0] * num_classes
    for index, group in enumerate(groups):
        for c in group:
            route[c] = index
    return route


def groups_from_routing(routing: Sequence[int]) -> list[list[int]]:
    """The inverse of `routing_table`: group k = the classes routed to student k."""
    num_groups = max(routing) + 1 if routing else 0
    return [[c for c, k in enumerate(routing) if k == g] for g in range(num_groups)]
