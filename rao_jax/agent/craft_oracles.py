"""The TextCraft oracles: the gold-plan expert (``TextCraftOracle``), the one that reads recipes through
``get_info`` (``ObservableCraftOracle``) and the program demonstrator of the CPU demo
(``ProgramCraftOracle``); ``crafting_oracle`` picks one by ``style``."""

from __future__ import annotations

import ast
import json
import random
import re
from typing import Any

from rao_jax.agent.policy import NodeView
from rao_jax.agent.protocol import format_action as action
from rao_jax.envs.base import Task
from rao_jax.envs.crafting import book_from_json
from rao_jax.envs.crafting_delegation import Cell, Work, schedule
from rao_jax.envs.crafting_plan import CraftStep, Unsolvable, aggregated_plan, greedy_plan


def _craft_call(step: CraftStep) -> str:
    return f"print(craft({dict(step.ingredients)!r}, ({step.item!r}, {step.count})))"


class TextCraftOracle:
    """Crafts the aggregated gold plan itself (flat), or cuts it into sub-agents (recursive; see
    ``crafting_delegation``) so the whole tree crafts exactly the gold plan.

    One oracle object serves every node of the trees it drives: when a node launches children it files
    each child's share of the plan under (tree, parent, goal), and a child picks its share up on its
    first step. A child it has no share for (another driver, a hand-written goal) plans its goal from
    base materials alone.
    """

    def __init__(self, task: Task, recursive: bool, leaf_crafts: int = 32, crafts_per_step: int = 4,
                 inline_crafts: int = 4):
        self.book = book_from_json(task.spec["book"], frozenset(task.spec["initial_inventory"]))
        self.inventory = dict(task.spec["initial_inventory"])
        self.recursive = recursive
        self.knobs = {"leaf_crafts": leaf_crafts, "crafts_per_step": crafts_per_step,
                      "inline_crafts": inline_crafts}
        self._shares: dict[tuple, list[Work]] = {}
        self._scripts: dict[tuple[int, int], list[str]] = {}

    def _work(self, view: NodeView) -> Work | None:
        targets = dict(view.goal.spec["targets"])
        if view.parent_id is None:
            inventory: dict[str, int] | None = self.inventory
        else:
            shares = self._shares.get((view.tree_id, view.parent_id, _key(targets)))
            if shares:
                return shares.pop(0)
            inventory = None
        try:
            return Work.of_plan(aggregated_plan(self.book, targets, inventory), list(targets))
        except Unsolvable:
            return None   # only a depth-first plan exists (some Minecraft tasks): the node works flat

    def _script(self, view: NodeView) -> list[str]:
        work = self._work(view)
        cps = self.knobs["crafts_per_step"]
        if work is None or not (self.recursive and view.recursive):
            steps = (work.steps() if work is not None else
                     greedy_plan(self.book, dict(view.goal.spec["targets"]), self.inventory))
            cells = [Cell(crafts=tuple(steps[i:i + cps])) for i in range(0, len(steps), cps)] or [Cell()]
        else:
            cells = list(schedule(work, **self.knobs).cells)
        script = []
        for k, cell in enumerate(cells):
            lines = [_craft_call(step) for step in cell.crafts]
            if cell.children:
                for child in cell.children:
                    self._shares.setdefault((view.tree_id, view.node_id, _key(child.targets)), []).append(child.work)
                calls = ",\n    ".join(f"launch_subagent({child.targets!r}, {child.budget})" for child in cell.children)
                lines.append(f"import asyncio\nresults = await asyncio.gather(\n    {calls},\n)\nprint(results)")
            if k == len(cells) - 1:
                lines.append("finish('crafted all targets')")
            thought = (f"Delegate {len(cell.children)} sub-trees in parallel." if cell.children
                       else "Craft the next items of the plan.")
            script.append(action(thought, "\n".join(lines)))
        return script

    async def act(self, view: NodeView) -> str:
        key = (view.tree_id, view.node_id)
        if key not in self._scripts or not view.steps:
            self._scripts[key] = self._script(view)
        script = self._scripts[key]
        return script[min(len(view.steps), len(script) - 1)]


def _key(targets: dict[str, int]) -> str:
    return json.dumps(targets, sort_keys=True)


class ObservableCraftOracle:
    """A TextCraft oracle a model can imitate: every action is a function of what the node sees.

    ``TextCraftOracle`` knows the initial inventory and hands each child a precomputed share of the
    gold plan, information no node's context holds. This oracle decides only from the node's goal (its
    prompt), its budget (stated in the prompt) and its observations:

    - step 0: ``print(get_info(['X'])[0]['recipes'][0])`` shows the recipe of the target X;
    - recursive: launch one sub-agent per craftable ingredient (an item whose name's tier digit is not
      0; all in one ``asyncio.gather`` when ``parallel``, else one after the other in one cell), asking
      for the recipe count times ``n``, the recipe executions; each gets an equal share of the budget,
      ``(B - 3) // k - 1`` for k launches from a node of budget B, so the node keeps a step to craft;
    - then craft X from the recipe and finish in the same cell (a leaf does this right after step 0).

    The arithmetic is written as Python (``n = -(-2 // 3)``, ``{'m2a': 2 * n}``), so imitating it means
    copying numbers from the goal and the observation, never computing them. Inventory is never read:
    a node crafts what it needs even if stock is held, so trees may use more base material than the
    gold plan (tasks need an ``inventory_buffer`` that covers the rounding of every node).

    Flat (or ``recursive=False``): the same procedure as one depth-first script in a single REPL, one
    ``get_info`` step per item of the tree and one craft step per item, with variables ``n_<item>``.
    The oracle parses its own ``get_info`` observations; if one is not a recipe (an error), it finishes
    with a failure message.
    """

    def __init__(self, task: Task | None, recursive: bool, parallel: bool = True):
        del task   # nothing of the task beyond what each node sees is used
        self.recursive = recursive
        self.parallel = parallel

    async def act(self, view: NodeView) -> str:
        return self.action_for(view)

    def action_for(self, view: NodeView) -> str:
        """The node's next action: a pure function of its goal, its budget and its past steps."""
        targets = dict(view.goal.spec["targets"])
        if not (self.recursive and view.recursive):
            walk = _FlatWalk(targets)
            text = walk.next_action(None)
            for step in view.steps:
                text = walk.next_action(step.observation)
            return text
        if not view.steps:
            return _lookup(next(iter(targets)))
        if len(targets) != 1:
            return action("One target per agent.", "finish('cannot: several targets')")
        item, count = next(iter(targets.items()))
        recipe = _read_recipe(view.steps[0].observation)
        if recipe is None:
            return action("The recipe lookup failed.", "finish('failed: no recipe')")
        subs = [(name, c) for name, c in recipe["ingredients"].items() if _is_crafted(name)]
        craft = _craft_code(item, recipe, "n") + "\nfinish('done')"
        runs = f"n = -(-{count} // {recipe['result_count']})"
        if len(view.steps) == 1 and subs:
            b = view.budget_left + 1   # the budget the prompt stated: one step (the lookup) is spent
            budget = f"b = ({b} - 3) // {len(subs)} - 1"
            goals = [f"{{{name!r}: {c} * n}}" for name, c in subs]
            if self.parallel:
                calls = ", ".join(f"launch_subagent({g}, b)" for g in goals)
                code = f"{runs}\n{budget}\nprint(await asyncio.gather({calls}))"
            else:
                code = f"{runs}\n{budget}\nfor g in [{', '.join(goals)}]:\n    print(await launch_subagent(g, b))"
            names = ", ".join(name for name, _ in subs)
            return action(f"Delegate {names}.", code)
        if len(view.steps) == 1:
            return action(f"Craft {item}.", f"{runs}\n{craft}")
        if len(view.steps) == 2 and subs:
            return action(f"Craft {item}.", craft)
        return action("Crafting failed.", "finish('failed')")


def _lookup(item: str) -> str:
    return action(f"Recipe of {item}.", f"print(get_info([{item!r}])[0]['recipes'][0])")


def _is_crafted(name: str) -> bool:
    """Whether an item is crafted, from its name: tiny-world names are ``<domain><tier><letter>``,
    paper-world names ``<domain>_raw_NN`` for base materials."""
    if "_raw_" in name:
        return False
    digits = re.match(r"[a-z]+(\d+)", name)
    return not digits or digits.group(1) != "0"


def _read_recipe(observation: str) -> dict[str, Any] | None:
    try:
        recipe = ast.literal_eval(observation.strip().splitlines()[0])
    except (ValueError, SyntaxError, IndexError):
        return None
    if not isinstance(recipe, dict) or "ingredients" not in recipe or "result_count" not in recipe:
        return None
    return recipe


def _craft_code(item: str, recipe: dict[str, Any], runs: str) -> str:
    parts = ", ".join(f"{name!r}: {c} * {runs}" for name, c in recipe["ingredients"].items())
    return f"print(craft({{{parts}}}, ({item!r}, {recipe['result_count']} * {runs})))"


class _FlatWalk:
    """The flat observable oracle's depth-first walk over the crafting tree, one step per action."""

    def __init__(self, targets: dict[str, int]):
        # Frames: [item, amount expression, recipe or None, index of the next ingredient to visit].
        self.stack: list[list[Any]] = [[item, str(count), None, 0] for item, count in reversed(targets.items())]
        self.pending: list[Any] | None = None   # the frame whose get_info observation comes next
        self.done = False

    def next_action(self, observation: str | None) -> str:
        prefix = ""
        if self.pending is not None:
            recipe = _read_recipe(observation or "")
            if recipe is None:
                return action("The recipe lookup failed.", "finish('failed: no recipe')")
            item, amount = self.pending[0], self.pending[1]
            self.pending[2] = recipe
            self.pending = None
            # The runs of an item are fixed as soon as its recipe is read: its ingredients' amounts use them.
            prefix = f"n_{item} = -(-({amount}) // {recipe['result_count']})\n"
        text = self._next(prefix)
        return text

    def _next(self, prefix: str) -> str:
        while self.stack:
            frame = self.stack[-1]
            item, amount, recipe, index = frame
            if recipe is None:
                self.pending = frame
                return action(f"Recipe of {item}.",
                              prefix + f"print(get_info([{item!r}])[0]['recipes'][0])")
            subs = [(name, c) for name, c in recipe["ingredients"].items() if _is_crafted(name)]
            var = f"n_{item}"
            if index < len(subs):
                frame[3] += 1
                name, c = subs[index]
                self.stack.append([name, f"{c} * {var}", None, 0])
                continue
            self.stack.pop()
            code = prefix + _craft_code(item, recipe, var)
            if not self.stack:
                self.done = True
                code += "\nfinish('done')"
            return action(f"Craft {item}.", code)
        return action("Done.", prefix + "finish('done')")


class ProgramCraftOracle:
    """A TextCraft demonstrator whose cells are small programs, for models too small to copy names.

    Every cell reads the recipe through Python variables, so the only values a model copies are the
    target (into the thought, then the code), its count and the budget, from its own prompt (step 0);
    with ``goal_variables`` (the rollout's option of that name predefines ``goal`` and ``budget``) it
    reads those too, and copies nothing. Each later action is one of
    a few fixed cells; which one comes next is a function of the number the previous cell printed:

    - recursive: LOOKUP prints ``<item> <recipe> <k>`` with k the crafted ingredients; k = 0 -> CRAFT
      (craft and finish), else DELEGATE (one sub-agent per crafted ingredient in one ``asyncio.gather``,
      each with ``(B - 3) // k - 1`` steps), then CRAFT;
    - flat: EXPAND looks up the next item of a to-do stack and pushes its crafted ingredients, printing
      how many items are still to expand (> 0 -> EXPAND again, 0 -> CRAFT); CRAFT crafts the most recently
      expanded item and prints how many are left to craft (> 0 -> CRAFT, 0 -> finish). One environment
      action per cell in both modes, so a flat agent's context grows with the size of the crafting tree.

    The cells tell a crafted ingredient by its name (``k[1] != '0'``), the form of ``_is_crafted`` a
    tiny model can learn for the tiny world's short names; ``check_names`` refuses any other world.

    ``mistake_rate`` makes the demonstrator imperfect: where the right move is DELEGATE / EXPAND it
    crafts at once instead with that probability (a reproducible draw per tree, node and step), which
    fails for lack of ingredients; after an error it finishes with a failure. A warm start on such
    demonstrations leaves RL a decision to sharpen.
    """

    LOOKUP = ("r = get_info([t])[0]['recipes'][0]\n"
              "n = -(-q // r['result_count'])\n"
              "subs = [(k, c * n) for k, c in r['ingredients'].items() if k[1] != '0']\n"
              "print(t, r, len(subs))")
    DELEGATE = ("b = (B - 3) // len(subs) - 1\n"
                "print(await asyncio.gather(*[launch_subagent({k: c}, b) for k, c in subs]))")
    CRAFT = ("print(craft({k: c * n for k, c in r['ingredients'].items()}, (t, r['result_count'] * n)))\n"
             "finish('done')")
    EXPAND = ("t, q = todo.pop()\n"
              "r = get_info([t])[0]['recipes'][0]\n"
              "n = -(-q // r['result_count'])\n"
              "plan.append((t, r, n))\n"
              "todo += [(k, c * n) for k, c in r['ingredients'].items() if k[1] != '0']\n"
              "print(t, r, len(todo))")
    CRAFT_NEXT = ("t, r, n = plan.pop()\n"
                  "print(craft({k: c * n for k, c in r['ingredients'].items()}, (t, r['result_count'] * n)),"
                  " len(plan))")

    def __init__(self, task: Task | None, recursive: bool, mistake_rate: float = 0.0, seed: int = 0,
                 goal_variables: bool = False):
        if not 0.0 <= mistake_rate < 1.0:
            raise ValueError(f"mistake_rate must be in [0, 1), got {mistake_rate}")
        if task is not None:
            self.check_names(task)
        self.recursive = recursive
        self.goal_variables = goal_variables
        self.mistake_rate = mistake_rate
        self.key = f"{seed}:{task.task_id if task is not None else ''}"

    @staticmethod
    def check_names(task: Task) -> None:
        """Refuses a task whose item names the cells' rule (``k[1] != '0'``: the tiny world's
        ``<domain><tier><letter>``, tier 0 = base) misreads, measured against ``_is_crafted``."""
        book = task.spec.get("book", {}).get("recipes", {})
        names = {*task.spec.get("targets", {}), *task.spec.get("initial_inventory", {}), *book}
        names |= {name for recipes in book.values() for r in recipes for name, _ in r["ingredients"]}
        wrong = sorted(n for n in names if (len(n) > 1 and n[1] != "0") != _is_crafted(n))
        if wrong:
            raise ValueError(f"ProgramCraftOracle tells base items by the tiny world's short names, and task "
                             f"{task.task_id} has items it would misread ({wrong[:3]}); use the world's "
                             f"short_names or another oracle (TextCraftOracle)")

    async def act(self, view: NodeView) -> str:
        return self.action_for(view)

    def _slip(self, view: NodeView) -> bool:
        if not self.mistake_rate:
            return False
        draw = random.Random(f"{self.key}:{view.tree_id}:{view.node_id}:{len(view.steps)}").random()
        return draw < self.mistake_rate

    def action_for(self, view: NodeView) -> str:
        """The node's next action: a function of its prompt, its past steps and the reproducible draw."""
        recursive = self.recursive and view.recursive
        if not view.steps:
            targets = dict(view.goal.spec["targets"])
            if len(targets) != 1:
                return action("One target per agent.", "finish('cannot: several targets')")
            (item, count), = targets.items()
            if self.goal_variables:   # the task is in the namespace: nothing to copy
                head, name = "(t, q), = goal['targets'].items()\nB = budget\n", "the target"
            else:
                head, name = f"t, q, B = {item!r}, {count}, {view.budget_left}\n", item
            if recursive:
                return action(f"Look up {name}.", head + self.LOOKUP)
            return action(f"Expand {name}.", head + "todo, plan = [(t, q)], []\n" + self.EXPAND)
        last = view.steps[-1]
        left = _printed_count(last.observation)
        if left is None:
            return action("Something failed.", "finish('failed')")
        if recursive:
            if len(view.steps) == 1:
                if left == 0 or self._slip(view):
                    return action("Craft it.", self.CRAFT)
                return action("Delegate the crafted ingredients.", self.DELEGATE)
            return action("Craft it.", self.CRAFT) if "launch_subagent" in last.action else \
                action("Something failed.", "finish('failed')")
        if "todo.pop()" in last.action and left > 0 and not self._slip(view):
            return action("Expand the next item.", self.EXPAND)
        if left > 0 or "todo.pop()" in last.action:
            return action("Craft the next item.", self.CRAFT_NEXT)
        return action("Done.", "finish('done')")


def _printed_count(observation: str) -> int | None:
    """The count a program cell printed last on its line, or None after an error."""
    text = (observation or "").strip()
    if not text or "Error" in text or "Traceback" in text:
        return None
    if text.startswith("[") and "launch_subagent" not in text:   # a DELEGATE cell printed its results
        return 0
    match = re.search(r"(\d+)\s*$", text.splitlines()[0])
    return int(match.group(1)) if match else None


def crafting_oracle(task: Task, recursive: bool, **knobs: Any):
    style = knobs.pop("style", "plan")
    if knobs.pop("observable", False) or style == "observable":
        return ObservableCraftOracle(task, recursive, **knobs)
    if style == "program":
        return ProgramCraftOracle(task, recursive, **knobs)
    if style != "plan":
        raise ValueError(f"oracle style must be 'plan', 'observable' or 'program', got {style!r}")
    return TextCraftOracle(task, recursive, **knobs)
