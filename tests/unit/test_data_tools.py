"""tools/prepare_data.py and tools/inspect_data.py, run in-process through their main()."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_then_inspect_marks_supervised_text(tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "sys"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            }
        )
        + "\n"
        + "{broken\n"
    )
    common = [
        "--data-path",
        str(data),
        "--tokenizer-model",
        "tiny:qwen3",
        "--seq-length",
        "64",
        "--split",
        "100,0,0",
        "--data-cache-dir",
        str(tmp_path / "cache"),
        "--num-workers",
        "1",
    ]
    prepare = load_tool("prepare_data")
    assert prepare.main(common + ["--no-progress"]) == 2
    assert "chat.jsonl:2: malformed JSON" in capsys.readouterr().err
    assert prepare.main(common + ["--no-progress", "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    cache_dir = out.splitlines()[0].removeprefix("cache: ")
    assert Path(cache_dir, "metadata.json").is_file() and "records read 2, samples kept 1" in out

    inspect = load_tool("inspect_data")
    assert inspect.main(["--cache", cache_dir, "--tokenizer-model", "tiny:qwen3", "--index", "0"]) == 0
    out = capsys.readouterr().out
    expected = (
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        "\u27e6<think>\n\n</think>\n\nhello<|im_end|>\u27e7\n"
    )
    assert expected in out
    assert "skipped as invalid {'malformed_json': 1}" in out
    assert inspect.main(common + ["--skip-invalid", "--pack", "0"]) == 0  # finds the same cache
    assert "train pack 0: samples [0]" in capsys.readouterr().out
