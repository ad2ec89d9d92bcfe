"""The progress bar of simulations and experiments, pinned under the round lines."""

from __future__ import annotations

import io
import sys

from fedmodel.config import RunConfig
from simulations.progress import CLEAR_LINE, RoundProgress, format_bar
from tests.simulations.run_folders import make_run, metrics


class Terminal(io.StringIO):
    """An in-memory stream that says it is a terminal (what RoundProgress draws on)."""

    def isatty(self) -> bool:
        return True


def test_bar_shows_rounds_accuracy_and_epsilon_with_its_meaning():
    config = RunConfig(num_server_rounds=10, delta=1e-6, accountant="prv")
    rounds = [metrics(r, accuracy=0.5 + r / 100, epsilon=0.25 * r) for r in (1, 2, 3)]
    text = format_bar(label="run 2/4", rounds=rounds, num_rounds=10, config=config, elapsed=30)
    assert text.startswith("run 2/4 [######--------------] 3/10")
    assert "acc 0.5300" in text and "ε 0.75 (δ=1e-06, PRV)" in text and "~70s left" in text
    plain = format_bar(
        label="", rounds=rounds, num_rounds=10, config=config.replace(dp=False), elapsed=1
    )
    assert "ε ∞ (DP off)" in plain
    assert (
        len(format_bar(label="x", rounds=rounds, num_rounds=10, config=config, elapsed=1, width=30))
        == 30
    )


def test_progress_keeps_every_line_and_pins_the_bar_under_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    config = RunConfig(num_server_rounds=2)
    run_dir = tmp_path / "run"
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    with RoundProgress(run_dir=run_dir, config=config, label="run 1/1", stream=terminal):
        folder = make_run(run_dir, config, rounds=1)
        print("round 1/2 | a line from the server")
        folder.add_round(metrics(2, accuracy=0.9, epsilon=1.5))
        print("round 2/2 | another line")
    output = terminal.getvalue()
    visible = [chunk.split("\n") for chunk in output.split(CLEAR_LINE)]
    text = "".join(part for chunks in visible for part in chunks)
    # Every line reaches the terminal unchanged, each followed by a redrawn bar...
    assert "round 1/2 | a line from the server\n" in output
    assert "round 2/2 | another line\n" in output
    after_first = output.split("a line from the server\n", 1)[1]
    assert after_first.startswith(CLEAR_LINE + "run 1/1 [##########----------] 1/2 | acc 0.1000")
    assert "2/2 | acc 0.9000 | ε 1.5 (δ=1e-05, RDP)" in text
    # ...and the bar is gone at the end: the output ends with a cleared line.
    assert output.endswith(CLEAR_LINE)
    assert sys.stdout is terminal  # restored


def test_progress_adds_nothing_when_output_is_not_a_terminal(tmp_path, monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stdout", pipe)
    config = RunConfig(num_server_rounds=1)
    with RoundProgress(run_dir=tmp_path / "run", config=config, stream=pipe):
        make_run(tmp_path / "run", config, rounds=1)
        print("round 1/1 | plain")
    assert pipe.getvalue() == "round 1/1 | plain\n"
