"""`transformer translate` and `transformer evaluate`, in a real pipe and in process."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sacrebleu

from transformer import Translator, hardware
from transformer.cli import main
from transformer.modeldir import save_model_dir

SRC = ["Ein Mann", "", "Kinder", "rot", "ein Ball", "Frau"]


def test_translate_through_a_live_pipe(copy_model_dir):
    """Each line is answered before the next is written (the filter does not wait for EOF),
    an empty line gives an empty line, and the output equals the library's."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "transformer.cli", "translate", "--model", str(copy_model_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    got = []
    try:
        for text in SRC:
            proc.stdin.write(text + "\n")
            proc.stdin.flush()
            got.append(lines.get(timeout=60).rstrip("\n"))  # answered while the pipe is open
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        proc.kill()
    assert got == Translator.from_pretrained(copy_model_dir).translate(SRC)
    assert got[1] == ""


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_translate_nbest_format(copy_model_dir, tmp_path, capsys):
    src = write(tmp_path / "in.txt", SRC)
    out = tmp_path / "out.txt"
    args = ["--model", str(copy_model_dir), "--input", str(src), "--output", str(out)]
    assert main(["translate", *args, "--nbest", "3", "--beam", "4"]) == 0
    rows = [line.split(" ||| ") for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 * len(SRC)
    assert [int(r[0]) for r in rows] == [i for i in range(len(SRC)) for _ in range(3)]
    expected = Translator.from_pretrained(copy_model_dir).translate_nbest(SRC, nbest=3)
    for i, result in enumerate(expected):
        for j, h in enumerate(result.hypotheses):
            _, text, score, log_prob = rows[3 * i + j]
            assert text == h.text
            assert float(score) == pytest.approx(h.score, abs=1e-4)
            assert float(log_prob) == pytest.approx(h.log_prob, abs=1e-4)


def test_translate_warns_about_truncated_lines_and_drops_none(
    learned_positions_model, copy_tokenizer, tmp_path, capsys
):
    model_dir = save_model_dir(tmp_path / "learned", learned_positions_model, copy_tokenizer)
    src = write(tmp_path / "in.txt", ["rot", "Zwei junge Männer spielen Fußball", "", "blau"])
    out = tmp_path / "out.txt"
    code = main(["translate", "--model", str(model_dir), "--input", str(src), "--output", str(out)])
    assert code == 0
    assert len(out.read_text(encoding="utf-8").split("\n")) == 4 + 1
    err = capsys.readouterr().err
    assert "line 2: longer than the model's 6 positions" in err
    assert "line 1" not in err and "line 4" not in err


def test_translate_refuses_a_missing_model(tmp_path, capsys):
    assert main(["translate", "--model", str(tmp_path / "nothing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_evaluate_prints_sacrebleu_signatures_and_speed(copy_model_dir, tmp_path, capsys):
    src = write(tmp_path / "src.txt", SRC)
    ref = write(tmp_path / "ref.txt", ["Ein Mann", "", "Kinder spielen", "rot", "Ball", "Frau"])
    hyp = tmp_path / "hyp.txt"
    args = ["--model", str(copy_model_dir), "--src", str(src), "--ref", str(ref)]
    assert main(["evaluate", *args, "--output", str(hyp)]) == 0
    text = capsys.readouterr().out
    assert "signature: BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in text
    assert "signature: chrF2|nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:" in text
    assert "sentences/s" in text and "target tokens/s" in text

    assert main(["evaluate", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    hyps = hyp.read_text(encoding="utf-8").splitlines()
    refs = ref.read_text(encoding="utf-8").splitlines()
    # The reported numbers are sacreBLEU's on the written hypotheses against the raw references.
    assert report["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-3)
    assert report["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-3)
    assert report["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert report["sentences"] == len(SRC)
    assert report["target_tokens"] > 0 and report["sentences_per_second"] > 0


@pytest.mark.parametrize("units", ["AVX512-BF16", None])
def test_auto_precision_is_stated_and_fp32_stays_exact(
    copy_model_dir, tmp_path, capsys, monkeypatch, units
):
    """--precision auto (the default) takes bf16 where the CPU has bf16 units and says so on
    stderr; --precision fp32 says nothing and translates as the fp32 Translator does."""
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda cpuinfo=None: units)
    chosen = "bf16" if units else "fp32"
    src = write(tmp_path / "in.txt", SRC)
    args = ["--model", str(copy_model_dir), "--input", str(src)]
    assert main(["translate", *args]) == 0
    err = capsys.readouterr().err
    assert f"transformer translate: precision {chosen} (auto: the CPU has " in err
    assert "--precision fp32 for exact float32" in err
    assert main(["translate", *args, "--precision", "fp32"]) == 0
    out, err = capsys.readouterr()
    assert "precision" not in err
    assert out.splitlines() == Translator.from_pretrained(
        copy_model_dir, precision="fp32"
    ).translate(SRC)
    ref = write(tmp_path / "ref.txt", SRC)
    evaluate = ["evaluate", "--model", str(copy_model_dir), "--src", str(src), "--ref", str(ref)]
    assert main([*evaluate, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inference_precision"] == chosen
    assert main(evaluate) == 0
    assert f"{chosen} (auto: the CPU has " in capsys.readouterr().out


def test_evaluate_refuses_files_of_different_lengths(copy_model_dir, tmp_path, capsys):
    src = write(tmp_path / "src.txt", SRC)
    ref = write(tmp_path / "ref.txt", SRC[:-1])
    args = ["--model", str(copy_model_dir), "--src", str(src), "--ref", str(ref)]
    assert main(["evaluate", *args]) == 2
    assert "has 6 lines but" in capsys.readouterr().err


def test_help_lists_translate_and_evaluate(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "translate" in out and "evaluate" in out
