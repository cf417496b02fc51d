"""A LabeledRows demonstrator for tiny from-scratch models: fixed program cells plus the one thing only a
model can do, labelling the row it has just read.

With ``rollout.goal_variables`` every node's namespace holds ``goal`` (the root's ``{'question': ...}``,
a child's ``{'rows': [a, b], 'count_by': ['label']}``) and ``budget``, so no cell copies a number. The
rows reach a node only through ``read_rows`` printed into its context, one row a turn: the cell that
starts a node's rows defines ``label(x)``, which records ``x`` as the label of the row just printed and
prints the next row's instance text (``done`` after the last), so each LABEL cell is one call,
``label('praise')``, written right under the text it labels, and Python counts them. Where the input
is larger than one leaf's rows, code cannot help a flat agent: every row must pass through its context.

Why one row a turn: a label written under its row needs only the few tokens above it, while labelling
a printed block of rows afterwards (by row number, letter or position) needs the model to find each
row again, a skill tiny from-scratch models pick up abruptly and unreliably (issue 26's probe, the
CPU demo's model trained on leaf demonstrations alone: 8-row blocks labelled by letter reached 0.92 of
the labels after 400 steps at one seed and none at another; one row a turn, 1.00 by step 150 at both).

- recursive: LOOK prints ``True`` when the node has more than ``leaf_rows`` rows, else starts them
  (prints the first row); rows -> LABEL, one a row, then TALLY (count the labels; finish); True ->
  SPLIT (up to ``fan_out`` children in one ``asyncio.gather``, each counting an equal share of whole
  leaves; with ``min_fan_out`` each split draws how many from ``min_fan_out..fan_out``, so that no
  number of children tells a model whether a node is the root or a child), then MERGE (add up their
  dicts; finish). A child finishes with its counts, the root with the answer to its question: one
  short cell per question kind, told apart by its text.
- flat: START (prints the first row), then LABEL for every row of the input in one context, then the
  count and the answer.

``mistake_rate`` makes it imperfect, as the TextCraft program oracle is: recursive, where LOOK printed
``True`` it reads the whole range anyway (and fails) with that probability; flat, after every
``leaf_rows`` rows it answers with rows still unread with that probability. The question kinds must be
the label aggregates (count, most / least frequent, compare): the cells keep no users or months.
"""

from __future__ import annotations

import random

from rao_jax.agent.policy import NodeView
from rao_jax.agent.protocol import format_action as action
from rao_jax.envs import labeled_rows
from rao_jax.envs.base import Task

ANSWERABLE = ("count_label", "most_frequent", "least_frequent", "compare")

# Defines label(x) over the range r and prints the range's first row: the instance text only (date and
# user play no part in a label).
_ROWS = ("L = []\n"
         "def label(x=None):\n"
         "    if x:\n"
         "        L.append(x)\n"
         "    i = r[0] + len(L)\n"
         "    print(read_rows(i, i + 1).split(' || ')[-1] if i < r[1] else 'done')\n"
         "label()")
LOOK = ("r = goal.get('rows', [0, num_rows()])\nif r[1] - r[0] > {leaf_rows}:\n    print(True)\nelse:\n"
        + "\n".join("    " + line for line in _ROWS.split("\n")))
# The demonstrator's slip: one read of the whole range, which the tool refuses (more than max_read rows).
READ = "print(read_rows(r[0], r[1]))"
SPLIT = ("w = {leaf_rows} * -(-(r[1] - r[0]) // {span})\n"
         "s = range(r[0], r[1], w)\n"
         "b = (budget - 3) // len(s) - 1\n"
         "parts = await asyncio.gather(*[launch_subagent({{'rows': [a, min(a + w, r[1])], 'count_by': ['label']}}, b)"
         " for a in s])")
MERGE = "c = {}\nfor p in parts:\n    for k in p:\n        c[k] = c.get(k, 0) + p[k]\n"
TALLY = "c = {k: L.count(k) for k in L}\n"
LABEL = "label({label!r})"
# The root's last cell, one per question kind (the model tells them apart by the question's text).
ANSWERS = {
    "count_label": "finish(c.get(goal['question']['label'], 0))",
    "most_frequent": "finish(max(c, key=lambda x: (c[x], x)))",
    "least_frequent": "finish(min({labels!r}, key=lambda x: (c.get(x, 0), x)))",
    "compare": ("q = goal['question']\nd = c.get(q['label'], 0) - c.get(q['other'], 0)\n"
                "finish('more' if d > 0 else 'less' if d < 0 else 'same')"),
}
START = "r = [0, num_rows()]\n" + _ROWS


class RowsProgramOracle:
    """See the module docstring. ``fan_out``: children per split (>= 2); ``min_fan_out``: when given
    (2..``fan_out``), each split draws its number of children from ``min_fan_out..fan_out``;
    ``leaf_rows``: the most rows a node labels itself (a leaf's share; a flat agent's slip comes after
    every ``leaf_rows`` rows)."""

    def __init__(self, task: Task, recursive: bool, mistake_rate: float = 0.0, fan_out: int = 4, seed: int = 0,
                 goal_variables: bool = True, leaf_rows: int = 8, min_fan_out: int | None = None):
        if not goal_variables:
            raise ValueError("the LabeledRows program oracle reads `goal` and `budget`: it needs goal_variables")
        if not 0.0 <= mistake_rate < 1.0 or fan_out < 2 or leaf_rows < 1:
            raise ValueError("mistake_rate must be in [0, 1), fan_out >= 2 and leaf_rows >= 1, got "
                             f"{mistake_rate}, {fan_out}, {leaf_rows}")
        if min_fan_out is not None and not 2 <= min_fan_out <= fan_out:
            raise ValueError(f"min_fan_out must be in [2, fan_out={fan_out}], got {min_fan_out}")
        kind = task.spec["question"]["kind"]
        if kind not in ANSWERABLE:
            raise ValueError(f"task {task.task_id}: the program oracle answers {ANSWERABLE}, not {kind!r} "
                             "(set the labeled_rows knob questions)")
        self.kind = kind
        self.rows = task.spec["rows"]
        self.recursive, self.fan_out, self.mistake_rate, self.leaf_rows = recursive, fan_out, mistake_rate, leaf_rows
        self.min_fan_out = fan_out if min_fan_out is None else min_fan_out
        self.key = f"{seed}:{task.task_id}"

    async def act(self, view: NodeView) -> str:
        return self.action_for(view)

    def _slip(self, view: NodeView) -> bool:
        draw = random.Random(f"{self.key}:{view.tree_id}:{view.node_id}:{len(view.steps)}").random()
        return draw < self.mistake_rate

    def _children(self, view: NodeView) -> int:
        """How many children this node's split launches (at most; fewer when it has fewer leaves)."""
        draw = random.Random(f"{self.key}:{view.tree_id}:{view.node_id}:fan_out")
        return draw.randint(self.min_fan_out, self.fan_out)

    def _finish(self, view: NodeView) -> str:
        """What a node does with its counts ``c``: the root answers its question, a child returns them."""
        if "rows" in view.goal.spec:
            return "finish(c)"
        return ANSWERS[self.kind].format(labels=sorted(labeled_rows.LABELS))

    def _label(self, row: int) -> str:
        return action("Label the row.", LABEL.format(label=labeled_rows.row_label(self.rows[row]["instance"])))

    def action_for(self, view: NodeView) -> str:
        """The node's next action, from its goal, its past steps and a reproducible draw."""
        steps = view.steps
        if steps and ("Error" in steps[-1].observation or "Traceback" in steps[-1].observation):
            return action("Something failed.", "finish('failed')")
        if self.recursive and view.recursive:
            return self._recursive(view)
        return self._flat(view)

    def _recursive(self, view: NodeView) -> str:
        steps = view.steps
        start, stop = view.goal.spec.get("rows", (0, len(self.rows)))
        if not steps:
            return action("Look at my rows.", LOOK.format(leaf_rows=self.leaf_rows))
        if stop - start <= self.leaf_rows:   # LOOK printed the first row; each LABEL prints the next
            done = len(steps) - 1
            if done < stop - start:
                return self._label(start + done)
            return action("Count the labels.", TALLY + self._finish(view))
        if len(steps) == 1:   # LOOK printed True: more rows than a leaf labels
            if self._slip(view):
                return action("Read them.", READ)
            return action("Split them among sub-agents.", SPLIT.format(
                leaf_rows=self.leaf_rows, span=self.leaf_rows * self._children(view)))
        if len(steps) == 2 and "launch_subagent(" in steps[-1].action:
            return action("Add up their counts.", MERGE + self._finish(view))
        return action("Something failed.", "finish('failed')")

    def _flat(self, view: NodeView) -> str:
        steps = view.steps
        if not steps:
            return action("Start reading.", START)
        done = len(steps) - 1
        early = 0 < done < len(self.rows) and done % self.leaf_rows == 0 and self._slip(view)
        if done < len(self.rows) and not early:
            return self._label(done)
        return action("Answer.", TALLY + self._finish(view))
