"""`aiops jobs metrics`: the table, the JSON and a PNG whose data match the run's metrics.jsonl."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    for epoch in range(5):
        loss, accuracy = 1.0 / (epoch + 1), 0.5 + epoch / 10
        print(f"epoch={epoch}; train_loss={loss:.4f}; test_accuracy={accuracy:.2f};", flush=True)
    print("class_3_f1=0.91;")
    """
)


def test_metrics_table_json_and_png(run_cli, tmp_path: Path, aiops_home: Path) -> None:
    from PIL import Image

    script = tmp_path / "curves.py"
    script.write_text(SCRIPT)
    assert run_cli("train", str(script), "--job-name", "curves").returncode == 0
    table = run_cli("jobs", "metrics", "curves")
    assert table.returncode == 0 and "train_loss" in table.stdout and "final: class_3_f1=0.91" in table.stdout

    png = tmp_path / "out" / "curves.png"
    result = run_cli("jobs", "metrics", "curves", "--plot", str(png), "--json")
    assert result.returncode == 0, result.output
    jsonl = [
        json.loads(line)
        for line in (aiops_home / "runs" / "curves" / "metrics.jsonl").read_text().splitlines()
    ]
    expected_loss = [s["value"] for s in jsonl if s["name"] == "train_loss"]
    assert [v for _, v in json.loads(result.stdout)["series"]["train_loss"]] == expected_loss

    image = Image.open(png)
    image.load()
    assert image.format == "PNG" and image.size[0] > 200
    drawn = json.loads(image.text["aiops:series"])
    assert sorted(drawn) == ["test_accuracy", "train_loss"]  # epoch is the x axis, class_3_f1 a single figure
    assert [y for _, y in drawn["train_loss"]] == expected_loss
    assert [x for x, _ in drawn["train_loss"]] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_plot_needs_a_curve_and_a_png_name(run_cli, tmp_path: Path) -> None:
    script = tmp_path / "one.py"
    script.write_text("print('loss=1.0;')\n")
    assert run_cli("train", str(script), "--job-name", "single").returncode == 0
    result = run_cli("jobs", "metrics", "single", "--plot", str(tmp_path / "x.png"))
    assert result.returncode == 2 and "no metric has more than one sample" in result.stderr
    wrong = run_cli("jobs", "metrics", "single", "--plot", str(tmp_path / "x.jpg"))
    assert wrong.returncode == 2 and "give a .png file name" in wrong.stderr
