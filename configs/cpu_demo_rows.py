"""LabeledRows on CPU: a tiny from-scratch policy learns to split inputs larger than its window (issue 26).

    python -m rao_jax.train --config configs/cpu_demo_rows.py --config.workdir=runs/cpu_demo_rows

Task: Oolong-style aggregation (``rao_jax.envs.labeled_rows``): rows ``Date || User || Instance`` whose
label (praise, complaint, question, request, update) is implied by a cue word of the instance text;
the question asks for a label's count (scored 0.75 ** |error|), the most or least frequent label, or a
comparison of two labels. The rows are never in the prompt: a node reads them with ``read_rows`` (at
most 16 a call) into its own context. The window is 512 tokens (``engine.max_seq_len``); an input of
m x the window holds m x 32 rows (16 tokens a row).

Policy: the CPU demo's 4-layer, 128-wide Qwen3-shaped model with its own 1024-piece tokenizer. The
warm start imitates ``rao_jax.agent.rows_program.RowsProgramOracle``: fixed program cells (how many
rows are mine; read them; split them among up to 4 sub-agents in one ``asyncio.gather`` and add up
their counts; answer) and one skill only a model has here, writing the labels of the 16 rows it has
just read (Python counts them). The demonstrator reads instead of splitting 3 times in 10 (and
fails), so RL has a decision to sharpen. RL: 1x and 2x the window; evaluation: 1, 2, 4, 8, 16 and
32x (35 tasks each). The flat baseline is ``configs/cpu_demo_rows_flat.py``.
"""

from rao_jax.config import default_config

SIZES = (1, 2, 4, 8, 16, 32)
TRAINED = ("1x", "2x")
QUESTIONS = ("count_label", "most_frequent", "least_frequent", "compare")


def get_config():
    config = default_config()
    config.workdir = "runs/cpu_demo_rows"
    config.model.config_json = "configs/models/tiny_qwen3.json"
    config.tokenizer.vocab_size = 1024
    config.tokenizer.corpus_tasks = 24
    config.data.family = "labeled_rows"
    # 26 tokens a row: measured with this run's tokenizer (dates and numbers split into digits).
    config.data.knobs = {"window_tokens": 640, "tokens_per_row": 26, "max_read": 10, "steps_per_chunk": 10,
                         "questions": list(QUESTIONS), "context_multiples": list(SIZES), "num_tasks": 120}
    config.data.train_difficulties = TRAINED

    config.rollout.brief_prompt = True
    config.rollout.goal_variables = True
    config.rollout.recursive = True
    config.rollout.tasks_per_step = 8
    config.rollout.group_size = 4
    config.rollout.temperature = 1.0
    config.rollout.top_p = 0.95
    config.rollout.max_new_tokens = 256
    config.rollout.sandbox_workers = 2
    config.engine.max_rows = 64
    config.engine.num_pages = 4096
    config.engine.page_size = 16
    config.engine.max_seq_len = 640
    config.engine.decode_steps = 16

    config.sft.steps = 150
    config.sft.learning_rate = 3e-3
    config.sft.rows = 8
    config.sft.num_tasks = 300
    config.sft.difficulties = TRAINED
    config.sft.recursive = True
    config.sft.oracle_knobs = {"style": "program", "goal_variables": True, "mistake_rate": 0.3}

    config.rl.drop_zero_signal = True
    config.rl.kl_coef = 0.05
    config.optim.learning_rate = 1e-4
    config.optim.weight_decay = 0.0
    config.train.steps = 30
    config.train.row_len = 640
    config.train.micro_batch_rows = 8
    config.train.logprob_chunk = 640
    config.train.checkpoint_every = 50
    config.train.eval_every = 30
    config.train.export_hf = False
    config.eval.num_tasks = 210
    config.eval.modes = ("recursive",)
    config.eval.temperature = 1.0
    return config
