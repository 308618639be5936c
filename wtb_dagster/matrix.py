"""Combinations of node variants and the variant matrix of a workflow."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wtb_dagster.errors import VariantError

BASELINE = "baseline"
# Dagster reserves `| , [ ]` in multi-partition keys; names stay in a conservative alphabet so
# that a combo key is a valid partition key, a readable thread id and a shell-safe argument.
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_name(kind: str, name: str) -> str:
    if not NAME_RE.match(name):
        raise VariantError(
            f"{kind} name {name!r} may only hold letters, digits, '_', '.' and '-' "
            "(it becomes part of a Dagster partition key)"
        )
    return name


def parse_picks(key: str) -> dict[str, str]:
    """`node=variant[+node=variant…]` as a mapping (`baseline` picks kept; `""` is none).

    >>> parse_picks("retrieve=bm25+generate=baseline")
    {'retrieve': 'bm25', 'generate': 'baseline'}
    """
    key = key.strip()
    if key in ("", BASELINE):
        return {}
    picks: dict[str, str] = {}
    for part in key.split("+"):
        node, sep, variant = part.strip().partition("=")
        if not sep or not node or not variant:
            raise VariantError(
                f"combo {key!r}: {part!r} is not 'node=variant'; "
                "join several with '+', e.g. 'generate=template+retrieve=bm25'"
            )
        if node in picks:
            raise VariantError(f"combo {key!r} names node {node!r} twice")
        picks[node] = variant
    return picks


def check_picks(variants: Mapping[str, Iterable[str]], key: str) -> list[tuple[str, str]]:
    """The picks of `key`, each checked against the declared variants (`baseline` allowed)."""
    known = {node: {BASELINE, *names} for node, names in variants.items()}
    picks = parse_picks(key)
    for node, variant in picks.items():
        if node not in known:
            raise VariantError(
                f"combo {key!r}: node {node!r} has no variants; varied nodes: "
                f"{', '.join(sorted(known)) or 'none'}"
            )
        if variant not in known[node]:
            raise VariantError(
                f"combo {key!r}: node {node!r} has no variant {variant!r}; "
                f"declared: {', '.join(sorted(known[node]))}"
            )
    return sorted(picks.items())


@dataclass(frozen=True, order=True)
class Combo:
    """One choice of variant per varied node; nodes left out run their baseline implementation.

    >>> Combo.parse("retrieve=bm25+generate=template").key
    'generate=template+retrieve=bm25'
    """

    picks: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, picks: Mapping[str, str]) -> Combo:
        kept = {}
        for node, variant in picks.items():
            check_name("node", node)
            check_name("variant", variant)
            if variant != BASELINE:
                kept[node] = variant
        return cls(tuple(sorted(kept.items())))

    @classmethod
    def parse(cls, key: str) -> Combo:
        return cls.of(parse_picks(key))

    @property
    def key(self) -> str:
        if not self.picks:
            return BASELINE
        return "+".join(f"{node}={variant}" for node, variant in self.picks)

    def variant_for(self, node: str) -> str:
        return dict(self.picks).get(node, BASELINE)

    def with_pick(self, node: str, variant: str) -> Combo:
        return Combo.of({**dict(self.picks), node: variant})

    def contains(self, other: Combo) -> bool:
        """True when every pick of `other` is also a pick of this combo."""
        return set(other.picks) <= set(self.picks)

    def __str__(self) -> str:
        return self.key


def cartesian(variants: Mapping[str, Iterable[str]]) -> list[Combo]:
    """Every combination of the baseline and the named variants of each varied node."""
    nodes = sorted(variants)
    choices = [[BASELINE, *sorted(set(variants[node]) - {BASELINE})] for node in nodes]
    return sorted(
        {Combo.of(dict(zip(nodes, chosen, strict=True))) for chosen in itertools.product(*choices)},
        key=lambda combo: (len(combo.picks), combo.key),
    )


def build_matrix(
    variants: Mapping[str, Iterable[str]],
    combos: Iterable[str] | None = None,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> list[Combo]:
    """The variant matrix: an explicit list of combo keys or the cartesian product, filtered.

    `include` keeps combos that contain at least one of the given patterns (a pattern is a
    combo key such as `retrieve=bm25`; `baseline` matches only the baseline combo);
    `exclude` drops combos that contain any of them. Every key is checked against the
    declared variants. The baseline combo is always first.
    """

    def checked(key: str) -> Combo:
        return Combo.of(dict(check_picks(variants, key)))

    if combos is not None:
        matrix = list(dict.fromkeys(checked(key) for key in combos))
    else:
        matrix = cartesian(variants)

    def matches(combo: Combo, pattern: Combo) -> bool:
        return combo == pattern if not pattern.picks else combo.contains(pattern)

    if include is not None:
        patterns = [checked(key) for key in include]
        matrix = [c for c in matrix if any(matches(c, p) for p in patterns)]
    if exclude is not None:
        patterns = [checked(key) for key in exclude]
        matrix = [c for c in matrix if not any(matches(c, p) for p in patterns)]
    if not matrix:
        raise VariantError("the variant matrix is empty after the include/exclude filters")
    baseline = Combo()
    return sorted(matrix, key=lambda c: (c != baseline, len(c.picks), c.key))
