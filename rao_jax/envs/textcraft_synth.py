"""TextCraft-Synth: a deterministic generator of crafting worlds and tasks (RAO_SPEC section 5).

One code path makes both the tiny world of the CPU demo (``SynthConfig.tiny()``: two domains, tiers
0-6, short names) and the paper-scale world (``SynthConfig.paper()``: five domains, tiers 0-12, ~1,350
recipes). Everything is drawn from ``random.Random`` instances seeded from the config's seed and a
purpose string, iterating only over lists and sorted keys, so a seed gives byte-identical tasks in any
process whatever ``PYTHONHASHSEED`` is.

World: tier 0 holds each domain's base materials; an item of tier t is crafted from same-domain items
of tiers t-1 (at least one, so its crafting depth is exactly t) and t-2, plus from t >= 4 one item of
tier t-3 or t-4; recipes use 1..fan-in ingredients with counts 1-2 and yield 1-4 units per execution.
Cross-domain items at the top tiers mix two domains. Each (domain, tier) list of items is split into
train and val, so validation targets never appear as training targets.

Task: one target ``Nx item``; the initial inventory holds the base materials the greedy gold plan
needs, plus a buffer (up to ``inventory_buffer`` of each) and 1-3 distractor materials.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import string
from collections.abc import Iterator
from typing import Any

from rao_jax.envs.base import Task, interleave, take_knob
from rao_jax.envs.crafting import Recipe, RecipeBook, crafting_task_spec, format_targets, with_errors
from rao_jax.envs.crafting_plan import base_need, greedy_plan

FAMILY = "textcraft_synth"


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Knobs of the world and of its tasks (defaults: the paper-scale world)."""

    seed: int = 0
    domains: tuple[str, ...] = ("metal", "crystal", "organic", "arcane", "tech")
    max_tier: int = 12
    items_per_tier: int = 25
    shrink_per_tier: float = 0.02          # tier t has items_per_tier * (1 - shrink * (t - 1)) items
    base_per_domain: int = 8
    fan_in_weights: tuple[float, ...] = (0.05, 0.25, 0.3, 0.2, 0.12, 0.08)   # P(1..6 ingredients)
    max_ingredient_count: int = 2
    max_yield: int = 4
    cross_items: int = 12
    cross_min_tier: int = 10
    val_fraction: float = 0.2
    difficulties: tuple[tuple[str, int, int], ...] = (
        ("easy", 2, 3), ("medium", 4, 6), ("hard", 7, 9), ("extreme", 10, 12))
    max_target_count: int = 3
    inventory_buffer: float = 0.2
    max_distractors: int = 3
    max_steps: int = 200
    short_names: bool = False

    @classmethod
    def paper(cls, seed: int = 0) -> SynthConfig:
        return cls(seed=seed)

    @classmethod
    def tiny(cls, seed: int = 0) -> SynthConfig:
        return cls(seed=seed, **_TINY)

    def __post_init__(self):
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ValueError(f"domains must be distinct and non-empty, got {self.domains}")
        if self.max_tier < 1 or self.items_per_tier < 1 or self.base_per_domain < 1:
            raise ValueError("max_tier, items_per_tier and base_per_domain must be >= 1")
        if not self.fan_in_weights or any(w < 0 for w in self.fan_in_weights) or sum(self.fan_in_weights) <= 0:
            raise ValueError(f"fan_in_weights must be non-negative and not all zero: {self.fan_in_weights}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name, lo, hi in self.difficulties:
            if not 1 <= lo <= hi <= self.max_tier:
                raise ValueError(f"difficulty {name!r}: tiers {lo}..{hi} outside 1..{self.max_tier}")

    def items_at(self, tier: int) -> int:
        return max(2, round(self.items_per_tier * (1.0 - self.shrink_per_tier * (tier - 1))))


_TINY: dict[str, Any] = dict(
    domains=("metal", "wood"), max_tier=6, items_per_tier=4, shrink_per_tier=0.0, base_per_domain=3,
    fan_in_weights=(0.3, 0.5, 0.2), cross_items=0, difficulties=(("easy", 1, 2), ("medium", 3, 4), ("hard", 5, 6)),
    max_target_count=2, max_steps=60, short_names=True)

# Named knob sets for ``rao_jax.data.task_sources`` (``{"preset": name, ...}``): a config's own knobs
# are laid over its preset's. ``per_difficulty`` is the number of tasks per difficulty bucket and split.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"per_difficulty": 640},          # the paper-scale world (SynthConfig's defaults)
    "tiny": {**_TINY, "per_difficulty": 40},   # a world small enough for CPU tests and demos
}


@dataclasses.dataclass(frozen=True)
class SynthWorld:
    """A generated world: the recipe book, each item's tier, and the train/val split of targets."""

    config: SynthConfig
    book: RecipeBook
    tiers: dict[str, int]
    splits: dict[str, tuple[str, ...]]      # "train" | "val" -> craftable items usable as targets


def _rng(config: SynthConfig, purpose: str) -> random.Random:
    # String seeds hash with SHA-512 inside random.Random, independent of PYTHONHASHSEED.
    return random.Random(f"{config.seed}/{purpose}")


def _suffix(index: int) -> str:
    letters = string.ascii_lowercase
    return letters[index] if index < 26 else letters[index // 26 - 1] + letters[index % 26]


def _name(config: SynthConfig, domain: str, tier: int, index: int) -> str:
    if config.short_names:
        return f"{domain[0]}{tier}{_suffix(index)}"
    if tier == 0:
        return f"{domain}_raw_{index:02d}"
    return f"{domain}_t{tier}_{index:02d}"


@functools.lru_cache(maxsize=8)
def generate_world(config: SynthConfig) -> SynthWorld:
    """The world of ``config`` (cached: tasks of one config share it)."""
    rng = _rng(config, "world")
    layers: dict[tuple[str, int], list[str]] = {}
    recipes: dict[str, tuple[Recipe, ...]] = {}
    tiers: dict[str, int] = {}
    fan_ins = list(range(1, len(config.fan_in_weights) + 1))
    for domain in config.domains:
        layers[(domain, 0)] = [_name(config, domain, 0, i) for i in range(config.base_per_domain)]
        tiers.update({name: 0 for name in layers[(domain, 0)]})
        for tier in range(1, config.max_tier + 1):
            names = [_name(config, domain, tier, i) for i in range(config.items_at(tier))]
            layers[(domain, tier)] = names
            for name in names:
                tiers[name] = tier
                n = rng.choices(fan_ins, weights=config.fan_in_weights)[0]
                pools = [layers[(domain, tier - 1)]]
                if tier >= 2:
                    pools.append(layers[(domain, tier - 2)])
                recipes[name] = (_recipe(config, rng, name, pools, _skip_pool(layers, domain, tier, rng), n),)
    if config.cross_items and len(config.domains) >= 2:
        lo = min(config.cross_min_tier, config.max_tier)
        for index in range(config.cross_items):
            tier = lo + index % (config.max_tier - lo + 1)
            first, second = rng.sample(list(config.domains), 2)
            name = (f"x{tier}{_suffix(index)}" if config.short_names else f"cross_t{tier}_{index:02d}")
            tiers[name] = tier
            pools = [layers[(first, tier - 1)], layers[(second, tier - 1)]]
            if tier >= 2:
                pools.append(layers[(first, tier - 2)] + layers[(second, tier - 2)])
            n = max(2, rng.choices(fan_ins, weights=config.fan_in_weights)[0])
            recipes[name] = (_recipe(config, rng, name, pools, None, n),)
            layers.setdefault(("cross", tier), []).append(name)
    book = RecipeBook(recipes)
    split_rng = _rng(config, "split")
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for key in sorted(layers):
        if key[1] == 0:
            continue
        names = list(layers[key])
        split_rng.shuffle(names)
        n_val = round(len(names) * config.val_fraction)
        splits["val"].extend(sorted(names[:n_val]))
        splits["train"].extend(sorted(names[n_val:]))
    return SynthWorld(config, book, tiers, {k: tuple(v) for k, v in splits.items()})


def _skip_pool(layers, domain: str, tier: int, rng: random.Random) -> list[str] | None:
    if tier < 4:
        return None
    return layers[(domain, tier - rng.choice((3, 4)))]


def _recipe(config: SynthConfig, rng: random.Random, name: str, pools: list[list[str]],
            skip_pool: list[str] | None, n: int) -> Recipe:
    chosen: list[str] = []
    for pool in pools[: max(1, n)]:       # one from each required pool first: depth is exact
        chosen.append(rng.choice(pool))
        if len(chosen) >= n:
            break
    if skip_pool and len(chosen) < n:
        chosen.append(rng.choice(skip_pool))
    candidates = sorted({item for pool in pools for item in pool} - set(chosen))
    while len(chosen) < n and candidates:
        chosen.append(candidates.pop(rng.randrange(len(candidates))))
    chosen = list(dict.fromkeys(chosen))
    pairs = tuple((item, rng.randint(1, config.max_ingredient_count)) for item in chosen)
    return Recipe(name, rng.randint(1, config.max_yield), pairs)


def make_task(world: SynthWorld, split: str, index: int, difficulty: str, tier: int, rng: random.Random) -> Task:
    """One task with a target of ``tier`` from ``split``'s items."""
    config = world.config
    pool = [item for item in world.splits[split] if world.tiers[item] == tier]
    if not pool:
        raise ValueError(f"no {split} item at tier {tier}; raise items_per_tier or lower val_fraction")
    item = rng.choice(pool)
    targets = {item: rng.randint(1, config.max_target_count)}
    _, need = base_need(world.book, targets)
    inventory = {name: n + math.ceil(n * config.inventory_buffer * rng.random()) for name, n in need.items()}
    spare = sorted(name for name, t in world.tiers.items() if t == 0 and name not in inventory)
    for name in rng.sample(spare, min(len(spare), rng.randint(1, config.max_distractors))):
        inventory[name] = rng.randint(1, 5)
    plan = greedy_plan(world.book, targets, inventory)
    gold = [step.as_official() for step in plan]
    spec = crafting_task_spec(world.book, targets, inventory, gold, max_depth=world.book.depth(item),
                              num_craft_steps=len(plan), tier=tier)
    return Task(task_id=f"{FAMILY}.{split}.{index}", family=FAMILY, goal=format_targets(targets),
                max_steps=config.max_steps, difficulty=difficulty, spec=spec)


def generate_tasks(config: SynthConfig, split: str, per_difficulty: int) -> Iterator[Task]:
    """``per_difficulty`` tasks of each difficulty bucket, target tiers spread evenly over the bucket."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    world = generate_world(config)
    rng = _rng(config, f"tasks/{split}")
    index = 0
    for name, lo, hi in config.difficulties:
        for k in range(per_difficulty):
            yield make_task(world, split, index, name, lo + k % (hi - lo + 1), rng)
            index += 1


def tasks_from_knobs(split: str, knobs: dict[str, Any]) -> Iterator[Task]:
    """The ``textcraft_synth`` task source: a ``preset`` (``PRESETS``, default ``paper``) whose knobs the
    given ones override (every ``SynthConfig`` field, ``per_difficulty``, ``errors``: default "raise"),
    round-robin over the difficulty buckets."""
    preset = take_knob(knobs, "preset", "paper")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    knobs = {**PRESETS[preset], **knobs}
    per = take_knob(knobs, "per_difficulty", None)
    errors = take_knob(knobs, "errors", "raise")
    config = SynthConfig(**{k: tuple(map(tuple, v)) if k == "difficulties" else tuple(v) if isinstance(v, list)
                            else v for k, v in knobs.items()})
    return interleave(with_errors(generate_tasks(config, split, per), errors))
