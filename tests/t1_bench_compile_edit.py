"""The compile-while-editing benchmark's parts that need no mount (benchmarks/compile_edit.py):
the editor's edits and the close-to-open probe on a local directory, and its page."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import compile_edit  # noqa: E402

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")


def test_the_editor_appends_one_numbered_define_per_edit_to_seeded_headers(tmp_path: Path) -> None:
    for h in ("a.h", "b.h"):
        (tmp_path / h).write_text("/* header */\n")
    editor = compile_edit.Editor(tmp_path, ["a.h", "b.h"], interval=0.0, seed=3)
    with editor:
        while len(editor.edits) < 5:  # noqa: ASYNC110 (a thread, no event to wait on)
            pass
    assert editor.error is None
    texts = {h: (tmp_path / h).read_text() for h in ("a.h", "b.h")}
    for header, k in editor.edits:
        assert f"#define BFTFS_EDIT_{k} {k}\n" in texts[header]
    again = compile_edit.Editor(tmp_path, ["a.h", "b.h"], interval=0.0, seed=3)
    assert [again.rng.choice(again.headers) for _ in range(5)] == [h for h, _ in editor.edits[:5]]


@needs_cc
def test_the_probe_sees_the_last_edit_and_not_a_header_without_it(tmp_path: Path) -> None:
    (tmp_path / "x.h").write_text("#define BFTFS_EDIT_7 7\n")
    assert compile_edit.sees_last_edit(tmp_path, "x.h", 7)
    (tmp_path / "x.h").write_text("#define BFTFS_EDIT_6 6\n")  # an old header
    assert not compile_edit.sees_last_edit(tmp_path, "x.h", 7)
    assert not (tmp_path / "bftfs_probe.c").exists()


def test_the_page_gives_medians_ratios_and_errors_per_target() -> None:
    runs = [
        {"target": "local", "quiet_s": 10.0, "edited_s": 12.0, "edits": 20},
        {"target": "local", "quiet_s": 12.0, "edited_s": 14.0, "edits": 24},
        {"target": "bftfs", "quiet_s": 11.0, "edited_s": 22.0, "edits": 21, "recalled": 30},
        {"target": "bftfs", "error": "RuntimeError: the builder's mount does not see edit 3"},
    ]
    summary = compile_edit.summarise(runs, ["local", "bftfs"])
    assert summary["local"]["quiet_s"] == 11.0 and summary["local"]["ratio"] == 13.0 / 11.0
    assert summary["bftfs"]["ratio"] == 2.0 and summary["bftfs"]["recalled"] == 30
    assert summary["bftfs"]["errors"] == [runs[3]["error"]]
    md = compile_edit.markdown(
        {
            "date": "d",
            "config": {"rounds": 2, "interval": 0.5, "seed": 42, "runs": 2},
            "summary": summary,
            "machine": {
                "cpu": "c",
                "cores": 2,
                "kernel": "k",
                "python": "p",
                "loadavg_start": [1.0],
                "loadavg_end": [1.0],
            },
            "commit": {"commit": "abc", "dirty": False},
        }
    )
    assert "| bftfs | 11.0 s | 22.0 s | 2.00x | 21 | 30 |" in md
    assert "| bftfs: error | RuntimeError: the builder's mount" in md
