"""Experiments: one TOML file describes one run or a grid of runs; each gets its own folder.

An experiment file has two tables::

    [experiment]
    name = "digits-dp-vs-nodp"     # names the experiment folder
    clients = 10                   # number of clients (a list makes it a grid axis)
    clients-per-round = 5          # optional: a count instead of fraction-train (may be a list)
    target-accuracy = 0.9          # optional: the summary reports rounds to reach it
    output-dir = "runs/experiments"  # optional: where the experiment folder goes

    [run-config]                   # any run-config key of pyproject.toml
    num-server-rounds = 20
    dp = [true, false]             # a list is a grid axis
    seed = [0, 1, 2]

The grid is the cartesian product of every list. Combinations that can only give the
same run (e.g. two noise multipliers with DP off) are run once. Every combination is
validated before anything runs. Relative paths (``output-dir``, ``data-dir``) are
relative to the current directory, as on the command line.

The experiment folder::

    <experiment-dir>/
      experiment.toml      the file as given
      plan.json            every run: folder, clients, grid values, resolved run config
      summary.csv          one row per run: status, final/best accuracy, max ε, δ, wall time
      summary.md           the same as a Markdown table (+ means over seeds)
      frontier.png         accuracy vs ε of every setting; accuracy.png: accuracy per round
      001_dp=true_seed=0/  one run folder per run (see fedmodel.results.run_folder)

:mod:`~simulations.experiments.spec` reads and expands the file,
:mod:`~simulations.experiments.runner` runs it, :mod:`~simulations.experiments.summary`
writes the summary; ``fedmodel simulate --config`` is :mod:`simulations.cli.simulate`.
"""
