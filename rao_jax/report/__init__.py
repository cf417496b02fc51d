"""Plots and a Markdown results table from the workdirs of CPU-demo training runs.

    python -m rao_jax.report --runs runs/rec_s0 runs/rec_s1 runs/flat_s0 [--oracle oracle.json] --out report/

Each ``--runs`` folder is a workdir written by ``python -m rao_jax.train``: ``config.json``, ``metrics.jsonl``
and ``eval/step_<N>.json``. A run is *recursive* when its eval JSON has a ``"recursive"`` key, *flat* otherwise
(a recursive run also evaluates flat mode; that figure is not used as the flat baseline). For each run, "before
RL" is the eval at step ``sft.steps`` (the end of the warm start; the first eval when there is none at that step)
and "after RL" the eval at the last step. A run with a single eval has no distinct before-RL result: its before-RL
cells read ``—`` (bars are missing) and it gives no RL gain. ``--oracle`` takes the JSON written by
``python -m rao_jax.evaluate --modes oracle --out FILE``.

The command writes into ``--out``:

- ``learning_curves.png``: warm-start loss per step (left) and RL rollout success per RL step with its moving
  average and the eval success points (right), one colour per run;
- ``success_by_depth.png``: success per difficulty, flat before RL (when a flat run has a distinct before-RL
  eval), flat after RL, recursive before / after RL and the oracle, with 95% intervals (one run) or the min / max
  over seeds; difficulties deeper than trained are shaded;
- ``success_by_input_size.png`` (runs with ``<m>x`` buckets, e.g. LabeledRows): success after RL against the
  input size in multiples of the window, one line per run (``rao_jax.report.structure``);
- ``results.md``: the success table (see :func:`success_table`: flat and recursive, each before and after RL), the
  acceptance figures (see :func:`acceptance`: per seed with 95% intervals of the differences, their mean and
  their spread max - min over seeds, including recursive after RL minus the better of flat before / after RL,
  since the flat baseline can collapse under RL), the delegation structure per bucket (launches, parallel
  fraction, critical path / calls; pooled per chain / fork for ChainHop) and the run folders with their seeds;

and prints the table. In Python::

    from rao_jax import report
    runs = [report.load_run(d) for d in dirs]
    rec = [r for r in runs if r.mode == "recursive"]; flat = [r for r in runs if r.mode == "flat"]
    print(report.success_table(rec, flat, oracle="oracle.json"))
    report.write_run_report("runs/rec_s0")  # one run, into runs/rec_s0/report/

With several seeds of one mode a cell reads ``mean (seed_a / seed_b / ...)``, seeds in increasing order; with one
run it reads ``success [ci_lo, ci_hi]``. Differences are in points (100 x success). A recursive - flat difference
pairs each recursive seed with the flat run of the same seed when there is one, else with the flat mean.
matplotlib (Agg backend) is imported only by the plotting functions.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rao_jax.paths import as_path, staged
from rao_jax.report.plots import plot_learning_curves, plot_success_by_depth, success_by_depth_series
from rao_jax.report.runs import MODES, OracleLike, Run, _oracle_map, load_oracle, load_run, split_by_mode
from rao_jax.report.structure import plot_success_by_input_size, structure_markdown, structure_rows
from rao_jax.report.tables import ACCEPTANCE_KEYS, acceptance, results_markdown, success_table

__all__ = ["ACCEPTANCE_KEYS", "MODES", "Run", "acceptance", "load_oracle", "load_run", "main",
           "plot_learning_curves", "plot_success_by_depth", "results_markdown", "split_by_mode",
           "plot_success_by_input_size", "structure_markdown", "structure_rows", "success_by_depth_series",
           "success_table", "write_report", "write_run_report"]


def write_report(runs: Sequence[Run], out: str | Path, oracle: OracleLike = None) -> str:
    """Writes learning_curves.png, success_by_depth.png and results.md into ``out``; returns the table."""
    with staged(out) as local:
        return _write_report(runs, local, oracle)


def _write_report(runs: Sequence[Run], out: Path, oracle: OracleLike) -> str:
    out.mkdir(parents=True, exist_ok=True)
    oracle_map = _oracle_map(oracle)
    recursive_runs, flat_runs = split_by_mode(runs)
    plot_learning_curves(runs, out / "learning_curves.png")
    plot_success_by_depth(recursive_runs, flat_runs, out / "success_by_depth.png", oracle_map)
    plot_success_by_input_size([*recursive_runs, *flat_runs], out / "success_by_input_size.png")
    (out / "results.md").write_text(results_markdown(recursive_runs, flat_runs, oracle_map))
    return success_table(recursive_runs, flat_runs, oracle_map)


def write_run_report(workdir: str | Path) -> Path:
    """The report of one run, into ``<workdir>/report/``; returns that folder."""
    out = as_path(workdir) / "report"
    write_report([load_run(workdir)], out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rao_jax.report", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="training workdirs (recursive and flat)")
    parser.add_argument("--oracle", default=None, help="oracle eval JSON (python -m rao_jax.evaluate --modes oracle)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    runs = [load_run(d) for d in args.runs]
    table = write_report(runs, args.out, args.oracle)
    print(table)
    print(f"\nwrote {Path(args.out) / 'results.md'}, learning_curves.png, success_by_depth.png")
    return 0
