"""ChainHop on CPU: one tiny policy launches sub-agents in parallel on independent chains and one at a
time along a chain (issue 26).

    python -m rao_jax.train --config configs/cpu_demo_hop.py --config.workdir=runs/cpu_demo_hop

Task: multi-hop questions over a generated knowledge base (``rao_jax.envs.chain_hop``): follow k
relations from a named entity (``k2`` .. ``k8``), or two independent chains at once (``*_fork``,
answer ``[first, second]``). Every document states its entity's facts at random places among filler
sentences (``shuffle_facts``), so finding a hop's answer takes reading the document. The chains reach
a node as data (``goal['chains']``, ``rollout.goal_variables``), and the goal text says the same few
words at every k (``brief_goal``): a model this small, trained on k2-k3 questions, garbles its first
cell under the longer k5-k8 question texts it never saw (measured: no k5 / k8 fork tree launched).

Policy: the CPU demo's 4-layer, 128-wide Qwen3-shaped model with its own 1024-piece tokenizer and its
1024-token window. The warm start (600 steps over the oracle trees of every trained cell's 150 tasks,
2,850 node demonstrations; 300 steps over 60 tasks a cell left seed 1 at 0.28 before RL) imitates
``rao_jax.agent.hop_program.HopProgramOracle``: fixed program cells (the root's one cell walks each
chain with one sub-agent per hop, each awaited before the next, and runs the chains side by side in
one ``asyncio.gather``; a sub-agent prints its entity's document with numbered sentences) and one
skill only a model has here: labelling each sentence it has just read with the relation it states
(``{0: '-', 1: 'mayor', 2: '-', 3: 'country'}``; Python takes the name ending the sentence labelled
with the relation asked). The demonstrator labels without mistakes; the warm-started model does not,
so RL has reading to sharpen. RL: k2-k3 chains and forks; evaluation: k2, k3, k5 and k8 chains and
forks (25 tasks each). The flat baseline is ``configs/cpu_demo_hop_flat.py``: every document of
every chain passes through its one context.

Measured (200 held-out tasks per eval; docs/cpu_demo_hop/README.md), seeds 0 / 1: held-out success
0.81 -> 0.915 and 0.455 -> 0.795 over RL; k5-k8 pooled 0.89 / 0.68 against the flat runs' 0.20 /
0.23; parallel-launch fraction after RL 0.00 on chains and 0.97 / 0.95 on forks; 17-18 minutes a run
alone on 2 cores.
"""

from pathlib import Path

from rao_jax.config import config_file

HOPS = (2, 3, 5, 8)
TRAINED = ("k2", "k2_fork", "k3", "k3_fork")


def get_config():
    # The TextCraft CPU demo's model, tokenizer size, window, sampling, warm-start and RL recipe (steps,
    # rows, learning rates, KL penalty, trees per step); what differs is below.
    config = config_file(Path(__file__).with_name("cpu_demo.py"))
    config.workdir = "runs/cpu_demo_hop"
    config.tokenizer.corpus_tasks = 24
    config.data.family = "chain_hop"
    config.data.knobs = {"hops": list(HOPS), "branches": [1, 2], "num_tasks": 150, "shuffle_facts": True,
                         "filler_sentences": 2, "brief_goal": True, "max_steps": 100,
                         "window_tokens": 1024}
    config.data.train_difficulties = TRAINED
    config.rollout.max_new_tokens = 160
    config.sft.steps = 600
    config.sft.num_tasks = 600   # every trained cell's 150 tasks: 2,850 node demonstrations
    config.sft.difficulties = TRAINED
    config.sft.oracle_knobs = {"style": "program", "goal_variables": True, "mistake_rate": 0.0}
    config.eval.num_tasks = 200
    config.train.export_hf = False
    return config
