"""A LabeledRows demonstrator for tiny from-scratch models: fixed program cells plus the one thing only a
model can do, labelling the rows it has just read.

With ``rollout.goal_variables`` every node's namespace holds ``goal`` (the root's ``{'question': ...}``,
a child's ``{'rows': [a, b], 'count_by': ['label']}``) and ``budget``, so no cell copies a number. The
rows reach a node only through ``read_rows`` printed into its context (at most ``max_read`` rows a
call; a leaf prints its ``leaf_rows`` rows with one read, each row lettered a, b, c, ...), and their
labels are hidden in the instance text, so counting them takes a model that reads: the LABEL cell
writes the label of each row just printed by its letter (``{'a': 'praise', 'b': ...}``), and Python
counts them. Where the input is larger than one leaf's rows, code cannot help a flat agent: every row
must pass through its context.

- recursive: LOOK prints the node's rows when they are at most ``leaf_rows``, else ``True``; rows ->
  LABEL (each row's label by its letter, counted by Python; finish); True -> SPLIT (up to ``fan_out``
  children in one ``asyncio.gather``, each counting an equal share of whole leaves), then MERGE (add
  up their dicts; finish). A child finishes with its counts, the root with the answer to its
  question: one short cell per question kind, told apart by its text.
- flat: START, then READ_NEXT (print the next ``leaf_rows`` rows) and LABEL_NEXT (append their
  labels, print whether rows are left) in turn, then the count and the answer.

``mistake_rate`` makes it imperfect, as the TextCraft program oracle is: recursive, where LOOK printed
``True`` it reads the whole range anyway (and fails) with that probability; flat, it answers after a chunk
with rows still unread. The question kinds must be the label aggregates (count, most / least
frequent, compare): the cells keep no users or months.
"""

from __future__ import annotations

import random

from rao_jax.agent.policy import NodeView
from rao_jax.agent.protocol import format_action as action
from rao_jax.envs import labeled_rows
from rao_jax.envs.base import Task

ANSWERABLE = ("count_label", "most_frequent", "least_frequent", "compare")


def _show(span: str) -> str:
    """A loop printing the rows of ``read_rows(<span>)`` (at most ``max_read`` of them: one read), one a
    line: the instance text only, with the row's letter in the range after it (``Fantastic the app this
    week. = c``). Date and user play no part in a label. The LABEL cell keys each label by that letter:
    one token, the same in every leaf, which a tiny model matches far sooner than a row number of two or
    three digit tokens (issue 26's probe, a from-scratch model on 8-row leaf demonstrations alone: with
    letters 0.92 of the labels right after 400 steps at one seed of two, none at the other; with row
    numbers none at either)."""
    return (f"for n, x in enumerate(read_rows({span}).split('\\n')):\n"
            "    print(x.split(' || ')[-1], '=', chr(97 + n))")


LOOK = ("r = goal.get('rows', [0, num_rows()])\nif r[1] - r[0] > {leaf_rows}:\n    print(True)\nelse:\n"
        + "\n".join("    " + line for line in _show("*r").split("\n")))
# The demonstrator's slip: one read of the whole range, which the tool refuses (more than max_read rows).
# Unlike LOOK's loop, so that a model cannot take the slip for a copy of the cell it has just written.
READ = "print(read_rows(r[0], r[1]))"
SPLIT = ("w = {leaf_rows} * -(-(r[1] - r[0]) // {span})\n"
         "s = range(r[0], r[1], w)\n"
         "b = (budget - 3) // len(s) - 1\n"
         "parts = await asyncio.gather(*[launch_subagent({{'rows': [a, min(a + w, r[1])], 'count_by': ['label']}}, b)"
         " for a in s])")
MERGE = "c = {}\nfor p in parts:\n    for k in p:\n        c[k] = c.get(k, 0) + p[k]\n"
TALLY = "c = {k: L.count(k) for k in L}\n"
LABEL = "L = list({labels}.values())\n"
# The root's last cell, one per question kind (the model tells them apart by the question's text).
ANSWERS = {
    "count_label": "finish(c.get(goal['question']['label'], 0))",
    "most_frequent": "finish(max(c, key=lambda x: (c[x], x)))",
    "least_frequent": "finish(min({labels!r}, key=lambda x: (c.get(x, 0), x)))",
    "compare": ("q = goal['question']\nd = c.get(q['label'], 0) - c.get(q['other'], 0)\n"
                "finish('more' if d > 0 else 'less' if d < 0 else 'same')"),
}
START = "r = [0, num_rows()]\ni = 0\nL = []\nprint(i < r[1])"
READ_NEXT = "j = min(i + {leaf_rows}, r[1])\n" + _show("i, j")
LABEL_NEXT = "L += list({labels}.values())\ni = j\nprint(i < r[1])"


class RowsProgramOracle:
    """See the module docstring. ``fan_out``: children per split (>= 2); ``leaf_rows``: the rows one
    LABEL cell labels (a leaf's share, and a flat agent's chunk)."""

    def __init__(self, task: Task, recursive: bool, mistake_rate: float = 0.0, fan_out: int = 4, seed: int = 0,
                 goal_variables: bool = True, leaf_rows: int = 8):
        if not goal_variables:
            raise ValueError("the LabeledRows program oracle reads `goal` and `budget`: it needs goal_variables")
        if not 0.0 <= mistake_rate < 1.0 or fan_out < 2 or not 1 <= leaf_rows <= 26:
            raise ValueError("mistake_rate must be in [0, 1), fan_out >= 2 and leaf_rows in 1..26 (one letter "
                             f"a row), got {mistake_rate}, {fan_out}, {leaf_rows}")
        kind = task.spec["question"]["kind"]
        if kind not in ANSWERABLE:
            raise ValueError(f"task {task.task_id}: the program oracle answers {ANSWERABLE}, not {kind!r} "
                             "(set the labeled_rows knob questions)")
        self.kind = kind
        self.rows = task.spec["rows"]
        max_read = int(task.spec["max_read"])
        if leaf_rows > max_read:
            raise ValueError(f"task {task.task_id}: leaf_rows {leaf_rows} is more than one read (max_read "
                             f"{max_read}): a leaf prints its rows with one read_rows call")
        self.recursive, self.fan_out, self.mistake_rate, self.leaf_rows = recursive, fan_out, mistake_rate, leaf_rows
        self.key = f"{seed}:{task.task_id}"

    async def act(self, view: NodeView) -> str:
        return self.action_for(view)

    def _slip(self, view: NodeView) -> bool:
        draw = random.Random(f"{self.key}:{view.tree_id}:{view.node_id}:{len(view.steps)}").random()
        return draw < self.mistake_rate

    def _labels(self, start: int, stop: int) -> str:
        """``{row letter: label}`` of rows start..stop-1 as the cell writes it: the letters anchor each
        label to the row printed with that letter."""
        stop = min(stop, len(self.rows))
        return repr({chr(97 + k - start): labeled_rows.row_label(self.rows[k]["instance"]) for k in range(start, stop)})

    def _finish(self, view: NodeView) -> str:
        """What a node does with its counts ``c``: the root answers its question, a child returns them."""
        if "rows" in view.goal.spec:
            return "finish(c)"
        return ANSWERS[self.kind].format(labels=sorted(labeled_rows.LABELS))

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
        last = steps[-1].action
        if len(steps) == 1 and stop - start <= self.leaf_rows:   # LOOK printed the rows
            label = LABEL.format(labels=self._labels(start, stop))
            return action("Label the rows.", label + TALLY + self._finish(view))
        if len(steps) == 1:   # LOOK printed True: more rows than one read
            if self._slip(view):
                return action("Read them.", READ)
            return action("Split them among sub-agents.", SPLIT.format(
                leaf_rows=self.leaf_rows, span=self.leaf_rows * self.fan_out))
        if len(steps) == 2 and "launch_subagent(" in last:
            return action("Add up their counts.", MERGE + self._finish(view))
        return action("Something failed.", "finish('failed')")

    def _flat(self, view: NodeView) -> str:
        steps = view.steps
        if not steps:
            return action("Start reading.", START)
        if len(steps) % 2 == 1:   # after START or a LABEL_NEXT, which printed whether rows are left
            left = steps[-1].observation.strip().endswith("True")
            if left and not (len(steps) > 1 and self._slip(view)):
                return action("Read the next rows.", READ_NEXT.format(leaf_rows=self.leaf_rows))
            return action("Answer.", TALLY + self._finish(view))
        first = (len(steps) // 2 - 1) * self.leaf_rows
        return action("Label the rows.", LABEL_NEXT.format(labels=self._labels(first, first + self.leaf_rows)))
