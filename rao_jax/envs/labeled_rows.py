"""LabeledRows: Oolong-style aggregation over more rows than fit in the model's window (RAO_SPEC section 5).

A task holds many rows ``Date || User || Instance``; each row has a label, either shown (``|| Label``) or
a hidden function of the instance text (each label owns a set of cue words, exactly one of which the
instance contains). The agent reads rows through ``read_rows(start, stop)`` (at most ``max_read`` rows a
call) and answers an aggregate question with ``finish(answer)``.

Scoring follows Oolong: integers earn 0.75 ** |gold - pred|, lists earn recall, everything else exact
match. A child goal ``{"rows": [start, stop], "count_by": [...]}`` asks for the counts of a row range
grouped by ``label``, ``user`` + ``label`` or ``month`` + ``label`` (keys joined with ``|``); the
environment grades it exactly, so children get their own success.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from rao_jax.envs.base import ActionError, Episode, Goal, Task, interleave, take_knob

FAMILY = "labeled_rows"
LABELS = ("praise", "complaint", "question", "request", "update")
_CUES = {
    "praise": ("wonderful", "superb", "delighted", "fantastic"),
    "complaint": ("broken", "awful", "refund", "disappointed"),
    "question": ("wondering", "unclear", "curious", "puzzled"),
    "request": ("please", "kindly", "need", "asking"),
    "update": ("shipped", "arrived", "changed", "moved"),
}
_FILLER = ("the order", "my account", "the new plan", "this week", "the app", "our team", "the package",
           "the invoice", "support", "the meeting")
GROUPINGS = (("label",), ("user", "label"), ("month", "label"))
QUESTIONS = ("count_label", "most_frequent", "least_frequent", "user_label", "month_label", "compare",
             "users_with_label")


@dataclasses.dataclass(frozen=True)
class RowsConfig:
    """Knobs: rows per task follow from the model window and how many windows the input should span."""

    seed: int = 0
    window_tokens: int = 2048
    context_multiple: float = 2.0          # input size / window (train 1-2x, evaluate 4-32x)
    tokens_per_row: int = 16               # measured on the row format, rounded up
    users: int = 12
    hidden_labels: bool = True
    max_read: int = 64
    max_steps: int | None = None           # None: 60, or steps_per_chunk per read-sized chunk + 20 when larger
    steps_per_chunk: int = 3
    questions: tuple[str, ...] = QUESTIONS  # the question kinds asked, in turn
    brief_goal: bool = False               # node texts name no rows, budgets or child ids (counts_in_text)

    def __post_init__(self):
        object.__setattr__(self, "questions", tuple(self.questions))
        unknown = [q for q in self.questions if q not in QUESTIONS]
        if unknown or not self.questions:
            raise ValueError(f"questions must be a non-empty subset of {QUESTIONS}, got {list(self.questions)}")
        if self.max_read < 1 or self.steps_per_chunk < 1:
            raise ValueError(f"max_read and steps_per_chunk must be >= 1, got {self.max_read}, {self.steps_per_chunk}")

    def num_rows(self) -> int:
        return max(8, int(self.window_tokens * self.context_multiple / self.tokens_per_row))

    def step_budget(self) -> int:
        # A tree that reads every chunk once needs about 3 calls per chunk (a leaf reads, then finishes; its
        # parent launches and merges), more where each launch also reserves a step; the budget grows with
        # the input so recursion can cover it.
        chunks = -(-self.num_rows() // self.max_read)
        return self.max_steps if self.max_steps is not None else max(60, self.steps_per_chunk * chunks + 20)


def row_label(instance: str) -> str:
    """The hidden label of an instance: the label whose cue word it contains."""
    words = set(instance.lower().replace(".", " ").split())
    hits = [label for label in LABELS if words & set(_CUES[label])]
    if len(hits) != 1:
        raise ValueError(f"instance {instance!r} has {len(hits)} label cues")
    return hits[0]


def score(gold: Any, pred: Any) -> float:
    """Oolong scoring."""
    if isinstance(gold, bool) or not isinstance(gold, int | list):
        return float(str(pred).strip().lower() == str(gold).strip().lower())
    if isinstance(gold, int):
        try:
            value = int(str(pred).strip())
        except ValueError:
            return 0.0
        return 0.75 ** abs(gold - value)
    if not isinstance(pred, list | tuple):
        return 0.0
    wanted = {str(g) for g in gold}
    return len(wanted & {str(p) for p in pred}) / len(wanted) if wanted else float(not pred)


def group_counts(rows: list[dict[str, str]], count_by: tuple[str, ...]) -> dict[str, int]:
    counts = Counter("|".join(row[key] for key in count_by) for row in rows)
    return dict(sorted(counts.items()))


def answer(rows: list[dict[str, str]], question: Mapping[str, Any]) -> Any:
    """The gold answer of ``question`` over ``rows``."""
    kind = question["kind"]
    by_label = Counter(row["label"] for row in rows)
    if kind == "count_label":
        return by_label[question["label"]]
    if kind in ("most_frequent", "least_frequent"):
        ranked = sorted(LABELS, key=lambda lab: (by_label[lab], lab))
        return ranked[-1] if kind == "most_frequent" else ranked[0]
    if kind == "user_label":
        return sum(1 for r in rows if r["user"] == question["user"] and r["label"] == question["label"])
    if kind == "month_label":
        return sum(1 for r in rows if r["month"] == question["month"] and r["label"] == question["label"])
    if kind == "compare":
        a, b = by_label[question["label"]], by_label[question["other"]]
        return "more" if a > b else "less" if a < b else "same"
    if kind == "users_with_label":
        return sorted({r["user"] for r in rows if r["label"] == question["label"]})
    raise ValueError(f"unknown question kind {kind!r}")


def question_text(question: Mapping[str, Any]) -> str:
    kind, label = question["kind"], question.get("label")
    return {
        "count_label": f"How many rows have the label '{label}'? Answer with an integer.",
        "most_frequent": f"Which label is the most frequent? (ties: the alphabetically last of {list(LABELS)})",
        "least_frequent": f"Which label is the least frequent? (ties: the alphabetically first of {list(LABELS)})",
        "user_label": f"How many rows of user {question.get('user')} have the label '{label}'? Answer an integer.",
        "month_label": f"How many rows dated in month {question.get('month')} have the label '{label}'?",
        "compare": f"Is '{label}' more, less or same as frequent as '{question.get('other')}'? Answer more/less/same.",
        "users_with_label": f"List (sorted) every user with at least one row labelled '{label}'.",
    }[kind]


def generate_task(config: RowsConfig, split: str, index: int, kind: str | None = None,
                  difficulty: str = "train") -> Task:
    rng = random.Random(f"{config.seed}/{FAMILY}/{split}/{index}")
    users = [f"user_{k:02d}" for k in range(config.users)]
    rows = []
    for _ in range(config.num_rows()):
        label = rng.choice(LABELS)
        month = rng.randint(1, 12)
        text = f"{rng.choice(_FILLER).capitalize()} {rng.choice(_CUES[label])} {rng.choice(_FILLER)}."
        rows.append({"date": f"2024-{month:02d}-{rng.randint(1, 28):02d}", "month": f"{month:02d}",
                     "user": rng.choice(users), "instance": text, "label": label})
    kind = kind or config.questions[index % len(config.questions)]
    label, other = rng.sample(LABELS, 2)
    question = {"kind": kind, "label": label, "other": other, "user": rng.choice(users),
                "month": f"{rng.randint(1, 12):02d}"}
    spec = {"rows": rows, "question": question, "gold": answer(rows, question),
            "hidden_labels": config.hidden_labels, "max_read": config.max_read,
            "window_tokens": config.window_tokens, "brief_goal": config.brief_goal}
    size = "" if config.brief_goal else f" {len(rows)}"   # brief: the same words at every input size
    goal = (f"The data has{size} rows 'Date || User || Instance"
            f"{'' if config.hidden_labels else ' || Label'}'; read them with read_rows(start, stop). "
            + ("Each row's label is one of " + ", ".join(LABELS) + ", implied by the instance text. "
               if config.hidden_labels else "") + question_text(question))
    return Task(task_id=f"{FAMILY}.{split}.{index}", family=FAMILY, goal=goal, max_steps=config.step_budget(),
                difficulty=difficulty, spec=spec)


class RowsEpisode(Episode):
    """Read-only rows; the root is graded by Oolong score, children by exact partial counts."""

    def __init__(self, task: Task):
        try:
            self.rows = list(task.spec["rows"])
            self.question = dict(task.spec["question"])
            self.gold = task.spec["gold"]
            self.hidden = bool(task.spec["hidden_labels"])
            self.max_read = int(task.spec["max_read"])
            self.brief = bool(task.spec.get("brief_goal", False))
            self.counts_in_text = not self.brief
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"task {task.task_id}: malformed labeled_rows spec ({err})") from None
        self.task = task
        self._goals: dict[int, Goal] = {}

    def root_goal(self) -> Goal:
        return Goal(text=self.task.goal, spec={"question": self.question})

    def tool_docs(self, recursive: bool) -> str:
        docs = [f"num_rows() -> int. read_rows(start, stop) -> str: rows start..stop-1 (at most {self.max_read}).",
                "finish(answer): your answer (int, label string, or list)."]
        if recursive:
            docs.append("await launch_subagent({'rows': [start, stop], 'count_by': ['label'] | ['user', 'label'] "
                        "| ['month', 'label']}, budget) -> dict of counts keyed 'a|b' for that row range.")
        return "\n".join(docs)

    def open_node(self, node_id: int, parent_id: int | None, goal: Goal) -> None:
        self._goals[node_id] = goal

    def tools(self, node_id: int) -> dict[str, Callable[..., Any]]:
        return {"num_rows": lambda: len(self.rows), "read_rows": self.read_rows}

    def read_rows(self, start: Any, stop: Any) -> str:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, stop)):
            raise ActionError("read_rows(start, stop) takes two ints")
        if not 0 <= start < stop <= len(self.rows):
            raise ActionError(f"read_rows: need 0 <= start < stop <= {len(self.rows)}, got {start}, {stop}")
        if stop - start > self.max_read:
            raise ActionError(f"read_rows: at most {self.max_read} rows per call, asked for {stop - start}")
        lines = []
        for k in range(start, stop):
            row = self.rows[k]
            line = f"{k}: {row['date']} || {row['user']} || {row['instance']}"
            lines.append(line if self.hidden else f"{line} || {row['label']}")
        return "\n".join(lines)

    def parse_child_goal(self, goal: Any, context: str) -> Goal:
        if not isinstance(goal, Mapping) or set(goal) != {"rows", "count_by"}:
            raise ActionError("launch_subagent goal must be {'rows': [start, stop], 'count_by': [...]}")
        span, count_by = goal["rows"], goal["count_by"]
        if (not isinstance(span, list | tuple) or len(span) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)
                or not 0 <= span[0] < span[1] <= len(self.rows)):
            raise ActionError(f"goal rows must be [start, stop] with 0 <= start < stop <= {len(self.rows)}")
        if not isinstance(count_by, list | tuple) or tuple(count_by) not in GROUPINGS:
            raise ActionError(f"goal count_by must be one of {[list(g) for g in GROUPINGS]}, got {count_by!r}")
        rows = "your rows (goal['rows'])" if self.brief else f"rows {span[0]}..{span[1] - 1}"
        text = (f"Count {rows} grouped by {' and '.join(count_by)}; finish with a dict "
                f"{{'{'|'.join(count_by)}': count}} (only non-zero groups). Labels: {', '.join(LABELS)}.")
        return Goal(text=text, spec={"rows": [span[0], span[1]], "count_by": list(count_by)},
                    context=str(context or ""))

    def node_success(self, node_id: int, finish_message: Any | None) -> float:
        goal = self._goals[node_id]
        if finish_message is None:
            return 0.0
        if "rows" not in goal.spec:
            return score(self.gold, finish_message)
        start, stop = goal.spec["rows"]
        truth = group_counts(self.rows[start:stop], tuple(goal.spec["count_by"]))
        if not isinstance(finish_message, Mapping):
            return 0.0
        return float({str(k): v for k, v in finish_message.items() if v} == truth)


def grouping_for(kind: str) -> tuple[str, ...]:
    """The partial counts from which a question's answer can be combined."""
    return {"user_label": ("user", "label"), "users_with_label": ("user", "label"),
            "month_label": ("month", "label")}.get(kind, ("label",))


def tasks_from_knobs(split: str, knobs: dict[str, Any]) -> Iterator[Task]:
    """The ``labeled_rows`` task source: ``num_tasks`` (14) per input size, ``context_multiples`` (train
    1x and 2x the window, val 4x and 8x), and every ``RowsConfig`` field; round-robin over the sizes."""
    n = take_knob(knobs, "num_tasks", 14)
    multiples = take_knob(knobs, "context_multiples", [1.0, 2.0] if split == "train" else [4.0, 8.0])
    config = RowsConfig(**knobs)
    return interleave(generate_task(dataclasses.replace(config, context_multiple=float(multiple)), split, index,
                                    difficulty=f"{multiple:g}x")
                      for index, multiple in enumerate(m for m in multiples for _ in range(n)))
