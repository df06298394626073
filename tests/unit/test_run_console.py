"""The console of a local run (``aptops_pipelines.console``): kfp.local's stream sorted into per-task logs and a
line per task, fed here with the lines kfp.local itself prints."""

from __future__ import annotations

import io

from aptops_pipelines.console import RunConsole, fmt_metric, headline

CYAN, RESET = "\x1b[96m", "\x1b[0m"


def _stream(task: str, body: list[str], status: str = "SUCCESS") -> str:
    lines = [f"00:00:01.000 - INFO - Executing task {CYAN}'{task}'{RESET}", "00:00:01.001 - INFO - Streamed logs:", "",
             *[f"    {b}" for b in body],
             f"00:00:02.000 - INFO - Task {CYAN}'{task}'{RESET} finished with status {status}", "-" * 40]
    return "\n".join(lines) + "\n"


def test_each_task_gets_one_console_line_and_its_own_log(tmp_path):
    out = io.StringIO()
    router = RunConsole(tmp_path / "logs", out, live=False, numbers=lambda t: {"rows_out": 9.0} if t == "a" else {})
    executor = '[KFP Executor 2026-12-03 00:00:01,000 INFO]: Got executor_input:\n{\n    "inputs": {}\n}'
    router.write("00:00:00.500 - WARNING - resources are ignored by the local runner\n")
    # written in pieces, as print() does, with the Trainer's bar redrawn in place
    text = _stream("a", [*executor.splitlines(), "aptops.train: training"]) + _stream("b", ["x"])
    for i in range(0, len(text), 7):
        router.write(text[i:i + 7])
    router.write(_stream("c", ["  5%|5         | 1/20 [00:01<00:19]\r 50%|#####     | 10/20 [00:05<00:05]\r"
                               "100%|##########| 20/20 [00:10<00:00]", "ValueError: the data is bad"], "FAILURE"))
    router.close_logs()
    shown = out.getvalue().splitlines()
    assert shown[0].startswith("  ✓ a ") and shown[0].endswith("rows_out 9")
    assert shown[1].startswith("  ✓ b ")
    assert shown[2].startswith("  ✗ c ") and str(tmp_path / "logs" / "c.log") in shown[2]
    assert shown[-1] == "      ValueError: the data is bad" and len(shown) <= 3 + 8
    assert "executor_input" not in out.getvalue() and "WARNING" not in out.getvalue()
    a_log = (tmp_path / "logs" / "a.log").read_text()
    assert "Got executor_input" in a_log and "aptops.train: training" in a_log and "x" not in a_log.split("\n")
    c_log = (tmp_path / "logs" / "c.log").read_text()
    assert "20/20" in c_log and "10/20" not in c_log  # a bar's last state, not its every redraw
    assert "resources are ignored" in (tmp_path / "logs" / "run.log").read_text()


def test_on_a_terminal_a_live_line_shows_progress_and_is_replaced_by_the_result(tmp_path):
    out = io.StringIO()
    router = RunConsole(tmp_path / "logs", out, live=True)
    router.write(_stream("train", ["aptops.progress: cleaning: 20/20 rows (5.0 rows/s)"]))
    router.close_logs()
    text = out.getvalue()
    assert "[####################] 20/20" in text and "\r\x1b[K" in text
    assert text.rstrip().split("\r\x1b[K")[-1].startswith("  ✓ train ")


def test_verbose_passes_the_raw_stream_through_and_still_writes_the_logs(tmp_path):
    out = io.StringIO()
    router = RunConsole(tmp_path / "logs", out, live=True, echo=True)
    router.write(_stream("a", ["hello"]))
    router.close_logs()
    assert "Executing task" in out.getvalue() and "✓" not in out.getvalue()
    assert "hello" in (tmp_path / "logs" / "a.log").read_text()


def test_numbers_read_as_a_person_reads_them():
    assert fmt_metric("size_bytes", 145_200_000) == "145.2 MB"
    assert fmt_metric("ratio_params", 0.8512) == "0.85x"
    assert fmt_metric("total_params", 134_515_008) == "134.5M"
    assert fmt_metric("rows_out", 12000.0) == "12,000"
    assert fmt_metric("perplexity", 12.3456) == "12.3"
    assert headline({"a": 1, "b": 2, "c": 3, "d": 4}, ("d", "x", "a", "b", "c")) == {"d": 4.0, "a": 1.0, "b": 2.0}
