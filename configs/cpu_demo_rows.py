"""LabeledRows on CPU: a tiny from-scratch policy learns to split inputs larger than its window (issue 26).

    python -m rao_jax.train --config configs/cpu_demo_rows.py --config.workdir=runs/cpu_demo_rows

Task: Oolong-style aggregation (``rao_jax.envs.labeled_rows``): rows ``Date || User || Instance`` whose
label (praise, complaint, question, request, update) is implied by a cue word of the instance text;
the question asks for a label's count (scored 0.75 ** |error|), the most or least frequent label, or a
comparison of two labels. The rows are never in the prompt: a node reads them with ``read_rows`` (at
most 8 a call) into its own context. The window is 640 tokens (``engine.max_seq_len``); an input of m
windows holds 24m rows (26 tokens a row with this run's tokenizer, 624 tokens a window of rows).

Policy: the CPU demo's 4-layer, 128-wide Qwen3-shaped model with its own 1024-piece tokenizer. The
warm start (400 steps on the node demonstrations of 300 oracle trees at 1-2x) imitates
``rao_jax.agent.rows_program.RowsProgramOracle``: fixed program cells (print True when the node has
more than 8 rows, else start them; split them among 2 or 3 sub-agents in one ``asyncio.gather``, then
add up their counts; answer) and one skill only a model has here, labelling each row as it is
printed, one a turn (``label('praise')`` under the row's text; Python counts). Each split draws 2 or
3 children, so in 1-2x trees both the root and the nodes below it merge 2 and 3 children's counts
and every node of every input size (24m rows) has a shape the training trees hold. Node texts name no
input size, row span, budget or child id (``brief_goal``), so a node at 32x reads what it read at 1x.
The demonstrator reads instead of splitting 15 times in 100 at every node with more than 8 rows
(and fails), so RL has a decision to sharpen. RL: 8 steps of 8 tasks x 4 trees at 1x and 2x the
window; evaluation before and after RL: 200 held-out tasks, 70 / 60 / 34 / 20 / 10 / 6 at 1 / 2 /
4 / 8 / 16 / 32x (a 32x tree is about 175 nodes, a 1x tree 4 or 5). The flat baseline is
``configs/cpu_demo_rows_flat.py``.

Measured (2-core AMD EPYC VM, each run alone; docs/cpu_demo_rows/README.md): 22 min 42 s (seed 0) and
22 min 0 s (seed 1) per run; held-out success before -> after RL, all 200 tasks 0.495 -> 0.68 and
0.46 -> 0.97, 4-32x pooled (70 tasks) 0.43 -> 0.71 and 0.20 -> 0.99.
"""

from pathlib import Path

from rao_jax.config import config_file

SIZES = (1, 2, 4, 8, 16, 32)
TRAINED = ("1x", "2x")
QUESTIONS = ("count_label", "most_frequent", "least_frequent", "compare")


def get_config():
    # The TextCraft CPU demo's model, tokenizer size, sampling, warm-start and RL recipe (steps, rows,
    # learning rates, KL penalty, trees per step); what differs is below.
    config = config_file(Path(__file__).with_name("cpu_demo.py"))
    config.workdir = "runs/cpu_demo_rows"
    config.tokenizer.corpus_tasks = 24
    config.data.family = "labeled_rows"
    # The sizes are in windows of 624 tokens (24 rows of 26 tokens: dates and numbers split into digits), so
    # every input of m windows is 24m rows and splits into whole 8-row leaves; the sampler's window is 640.
    # Node texts name no size, span, budget or child id (brief_goal) and every root has the same budget
    # (max_steps): what a node reads at 32x is what it read at 1x.
    config.data.knobs = {"window_tokens": 624, "tokens_per_row": 26, "max_read": 8, "max_steps": 8000,
                         "brief_goal": True, "questions": list(QUESTIONS), "context_multiples": list(SIZES),
                         "num_tasks": 300}
    config.data.train_difficulties = TRAINED
    config.rollout.max_new_tokens = 256
    config.engine.max_rows = 64
    # Every node of every tree in flight keeps its KV pages: a larger pool than the TextCraft demo's
    # means fewer waiting nodes evicted and prefilled again (32 KiB a page, 512 MiB in all).
    config.engine.num_pages = 16384
    config.engine.max_seq_len = 640
    config.sft.steps = 400
    config.sft.num_tasks = 300
    config.sft.difficulties = TRAINED
    # Each split launches 2 or 3 children (drawn per node): in 1-2x trees the root and the nodes below it
    # both merge 2 and 3 children's counts, so a node tells from its question, not from how many children
    # it had, whether it answers or returns counts (with 3 children at the root only, the merge cells of
    # 3-way nodes below the root, first met at 8x, answered the root's question).
    config.sft.oracle_knobs = {"style": "program", "goal_variables": True, "mistake_rate": 0.15, "leaf_rows": 8,
                               "fan_out": 3, "min_fan_out": 2}
    config.train.steps = 8
    config.train.eval_every = 8
    # 200 held-out tasks, fewer of the large inputs: a 32x tree is about 175 nodes, a 1x tree 4 or 5.
    config.eval.per_difficulty = {"1x": 70, "2x": 60, "4x": 34, "8x": 20, "16x": 10, "32x": 6}
    config.eval.num_tasks = 200
    config.train.export_hf = False
    return config
