"""LabeledRows on CPU: a tiny from-scratch policy learns to split inputs larger than its window (issue 26).

    python -m rao_jax.train --config configs/cpu_demo_rows.py --config.workdir=runs/cpu_demo_rows

Task: Oolong-style aggregation (``rao_jax.envs.labeled_rows``): rows ``Date || User || Instance`` whose
label (praise, complaint, question, request, update) is implied by a cue word of the instance text;
the question asks for a label's count (scored 0.75 ** |error|), the most or least frequent label, or a
comparison of two labels. The rows are never in the prompt: a node reads them with ``read_rows`` (at
most 10 a call) into its own context. The window is 640 tokens (``engine.max_seq_len``); an input of
m x the window holds m x 24 rows (26 tokens a row with this run's tokenizer).

Policy: the CPU demo's 4-layer, 128-wide Qwen3-shaped model with its own 1024-piece tokenizer. The
warm start imitates ``rao_jax.agent.rows_program.RowsProgramOracle``: fixed program cells (print my
rows, or True when they are more than one read; split them among up to 4 sub-agents in one
``asyncio.gather``, then add up their counts; answer) and one skill only a model has here, writing
the label of each row it has just read by the row's number (Python counts them). The demonstrator
reads instead of splitting 3 times in 10 (and fails), so RL has a decision to sharpen. RL: 1x and 2x
the window; evaluation: 1, 2, 4, 8, 16 and 32x (35 tasks each). The flat baseline is
``configs/cpu_demo_rows_flat.py``.

Status (issue 26 open): not yet a working demo. Warm-start probes (600 steps, 12 held-out 1-2x tasks,
greedy): at 10 rows a read every leaf wrote one label for all its rows (0 of 48 leaves right, with a
separate size-check step the first cell now does without); at 4 rows a read (``--config.data.knobs.
max_read=4``) 91 of 114 leaves and 4 of 12 roots were right; at 2 rows, 214 of 222 leaves. But the
sampler ran 6-10 model calls a second on these trees, and a 32x input takes 80-200 leaves a tree at
10-4 rows a read: the two evaluations alone outgrow the 30 minutes the issue allows.
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
    # 26 tokens a row: measured with this run's tokenizer (dates and numbers split into digits).
    config.data.knobs = {"window_tokens": 640, "tokens_per_row": 26, "max_read": 10, "steps_per_chunk": 10,
                         "questions": list(QUESTIONS), "context_multiples": list(SIZES), "num_tasks": 120}
    config.data.train_difficulties = TRAINED
    config.rollout.max_new_tokens = 256
    config.engine.max_rows = 64
    config.engine.num_pages = 4096
    config.engine.max_seq_len = 640
    config.sft.steps = 150
    config.sft.num_tasks = 300
    config.sft.difficulties = TRAINED
    config.sft.oracle_knobs = {"style": "program", "goal_variables": True, "mistake_rate": 0.3}
    config.train.row_len = 640
    config.train.logprob_chunk = 640
    config.train.export_hf = False
    return config
