"""Bad input said before any worker starts, and output stores that fail without losing a case:
a corrupt baseline file, a selection that matches nothing, ids from ``harness list`` pasted into
``-k``, ``report`` on things that are not a history, and the result stores when one cannot be written."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from harness.baselines import BaselineStore, compare
from harness.cli import EXIT_USAGE, main
from harness.outputs import ResultStores
from harness.reports.history import History
from tests.conftest import CPU_ENV, ROOT
from tests.support.cases import make_case

CKPT = str(ROOT / "suites" / "ckpt.yaml")


def test_a_corrupt_baseline_is_refused_before_start_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baselines = tmp_path / "baselines" / CPU_ENV
    baselines.mkdir(parents=True)
    good = (ROOT / "baselines" / CPU_ENV / "ckpt.json").read_text()
    (baselines / "ckpt.json").write_text(
        good[: len(good) // 2]
    )  # cut mid-JSON, as a killed editor or a bad merge leaves it
    artifacts = tmp_path / "artifacts"
    code = main(
        ["run", CKPT, "-k", "tp1pp1/none", "--baselines", str(tmp_path / "baselines"), "--artifacts", str(artifacts)]
    )
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    line = good[: len(good) // 2].count("\n") + 1
    assert f"{baselines / 'ckpt.json'}:{line}: not valid JSON" in err and "nothing was run" in err
    assert not artifacts.exists()  # no worker, no results, no history run left open
    # the same file is named by `harness baselines` instead of a traceback
    assert main(["baselines", CKPT, "--baselines", str(tmp_path / "baselines")]) == 0
    assert f"{baselines / 'ckpt.json'}:{line}: not valid JSON" in capsys.readouterr().err


def test_a_baseline_broken_during_the_run_is_that_cases_error(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path, {"cpu": CPU_ENV})
    store.path("cpu", "s").parent.mkdir(parents=True)
    store.path("cpu", "s").write_text('{"format": 1, "cases": {')
    from harness.records import CaseOutcome

    result = compare(CaseOutcome(make_case(), {"x": 1.0}, None, 1.0, "/a"), store, update=False, provenance={})
    assert result.verdict.value == "error" and "cannot compare" in (result.outcome.error or "")


@pytest.mark.parametrize("args", [["-k", "no_such_case"], ["-m", "no_such_marker"], ["-k", "tp1pp2", "-m", "tp2"]])
def test_a_selection_that_matches_nothing_exits_non_zero(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", CKPT, *args]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "select(s) no case of" in err and args[1] in err
    assert main(["run", CKPT, *args, "--artifacts", "/nonexistent/never-created"]) == EXIT_USAGE


def test_listed_ids_paste_into_k(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", CKPT, "--platform", "cpu"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if "world=" in line]
    assert len(listed) == 26  # 18 fp32 + 8 bf16
    for key in (listed[0], listed[-1]):
        assert main(["list", CKPT, "-k", key]) == 0
        (line,) = [ln for ln in capsys.readouterr().out.splitlines() if "world=" in ln]
        assert line.split()[0] == key


def test_report_refuses_what_is_not_a_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    expected = {
        tmp_path: "a directory",
        empty: "an empty file",
        text: "not an SQLite database",
        other: "without the table(s) cases, metrics, runs",
        tmp_path / "missing.sqlite": "no run history there",
    }
    for path, why in expected.items():
        assert main(["report", "--history", str(path), "--out", str(tmp_path / "report")]) == EXIT_USAGE
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"harness: {path}: ") and why in err and "\n" not in err
    assert empty.read_bytes() == b""  # nothing written into it
    assert not (tmp_path / "report").exists()


def _result(tmp_path: Path, x: float):  # noqa: ANN202
    from harness.records import CaseOutcome

    return compare(
        CaseOutcome(make_case(f"s/tiny-gpt/tp1pp1/x{x:g}"), {"x": x}, None, 1.0, "/a"),
        BaselineStore(tmp_path / "b"),
        update=False,
        provenance={},
    )


def test_result_stores_keep_every_case_in_the_store_that_works(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # results.json cannot be written (its folder is a file): the history, written first, keeps both cases
    stores = ResultStores(tmp_path / "history.sqlite", blocker / "results.json", {"commit": "c"})
    problems = stores.keep(_result(tmp_path, 1.0)) + stores.keep(_result(tmp_path, 2.0)) + stores.finish()
    assert len(problems) == 1 and "cannot write the results file" in problems[0] and "File exists" in problems[0]
    history = History(tmp_path / "history.sqlite")
    assert len(history.case_runs("s/tiny-gpt").values()) == 2
    history.close()
    assert "results file" in (stores.summary() or "") and "2 finished case(s)" in (stores.summary() or "")
    # the history cannot be opened: results.json keeps both cases
    stores = ResultStores(blocker / "history.sqlite", tmp_path / "out" / "results.json", {"commit": "c"})
    problems = stores.keep(_result(tmp_path, 1.0)) + stores.keep(_result(tmp_path, 2.0)) + stores.finish()
    assert len(problems) == 1 and "cannot write the run history" in problems[0]
    assert len(json.loads((tmp_path / "out" / "results.json").read_text())["cases"]) == 2
    # both work: nothing to say
    stores = ResultStores(tmp_path / "h2.sqlite", tmp_path / "r2.json", {})
    assert stores.keep(_result(tmp_path, 1.0)) == [] and stores.finish() == [] and stores.summary() is None


def test_every_data_file_problem_is_said_before_start_in_one_report(
    write_suite,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mmlu = tmp_path / "mmlu"
    (mmlu / "test").mkdir(parents=True)
    (mmlu / "test" / "law_test.csv").write_text("q,a,b,c,d,A\nq,a,b,c,d,E\n")
    (mmlu / "dev").mkdir()
    (mmlu / "dev" / "law_dev.csv").write_text("q,a,b,c,d,A\n")
    latin = tmp_path / "wiki.txt"
    latin.write_bytes(b"caf\xe9\n")
    questions = tmp_path / "question.jsonl"
    questions.write_text('{"question_id": 1, "category": "writing", "turns": ["hi"]}\n{"question_id": 2\n')
    quant = write_suite(
        "suite: q\ncheck: quant_accuracy\n"
        f"params: {{mmlu: {mmlu}, mmlu_shots: 3, eval_text: {latin}}}\n"
        "matrix:\n  model: [tiny-gpt-trained]\n  optimization: [fp8]\n",
        "q.yaml",
    )
    spec = write_suite(
        f"suite: s\ncheck: spec_decode\nparams: {{prompts: {questions}, train_steps: 0}}\n"
        "matrix:\n  model: [tiny-gpt-trained]\n",
        "s.yaml",
    )
    artifacts = tmp_path / "artifacts"
    assert main(["run", str(quant), str(spec), "--platform", "cpu", "--artifacts", str(artifacts)]) == EXIT_USAGE
    err = capsys.readouterr().err
    print(err)
    assert f"q.yaml:3: params.mmlu: {mmlu / 'test' / 'law_test.csv'}:2: answer 'E' is not one of" in err
    assert f"q.yaml:3: params.eval_text: {latin}:1: not UTF-8 (byte 0xe9)" in err
    assert f"s.yaml:3: params.prompts: {questions}:2: not JSON" in err
    assert not artifacts.exists()
    # with the rows fixed, the short dev split is what remains
    (mmlu / "test" / "law_test.csv").write_text("q,a,b,c,d,A\n")
    latin.write_text("café\n")
    assert main(["run", str(quant), "--platform", "cpu", "--artifacts", str(artifacts)]) == EXIT_USAGE
    assert (
        f"params.mmlu: {mmlu / 'dev' / 'law_dev.csv'}:1: 1 dev question(s), mmlu_shots asks 3"
        in capsys.readouterr().err
    )


def test_update_baselines_into_a_folder_it_cannot_write_is_refused_before_start(tmp_path: Path, capsys) -> None:
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / CPU_ENV).write_text("a file where the environment's folder belongs")
    argv = ["run", CKPT, "-k", "tp1pp1/none", "--baselines", str(tmp_path / "baselines"), "--update-baselines"]
    assert main([*argv, "--artifacts", str(tmp_path / "artifacts")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"--update-baselines cannot write there: {tmp_path / 'baselines' / CPU_ENV}" in err
    assert "Traceback" not in err and "nothing was run" in err


def test_a_baseline_write_that_fails_mid_run_keeps_the_measurement_as_the_cases_error(tmp_path: Path) -> None:
    from harness.records import CaseOutcome, Verdict

    (tmp_path / "cpu").write_text("a file where the environment's folder belongs")
    outcome = CaseOutcome(make_case(), {"x": 1.0}, None, 1.0, "/art/case")
    result = compare(outcome, BaselineStore(tmp_path), update=True, provenance={})
    assert result.verdict is Verdict.ERROR
    assert result.outcome.error.startswith(f"measured, but the baseline could not be written to {tmp_path / 'cpu'}")
    assert [(m.name, m.measured) for m in result.metrics] == [("x", 1.0)]


def test_baselines_names_and_prunes_entries_of_cases_no_suite_declares(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "baselines" / CPU_ENV
    folder.mkdir(parents=True)
    for name in ("ckpt.json", "ckpt.noise.json"):
        data = json.loads((ROOT / "baselines" / CPU_ENV / name).read_text())
        data["cases"]["ckpt/tiny-gpt/tp9pp1/none[cpu]"] = next(iter(data["cases"].values()))  # a layout long gone
        (folder / name).write_text(json.dumps(data))
    (folder / "elsewhere.json").write_text(
        json.dumps({"suite": "elsewhere", "cases": {"elsewhere/x": {"metrics": {}, "provenance": {}}}})
    )
    argv = ["baselines", CKPT, "--baselines", str(tmp_path / "baselines")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 stale entry name cases no suite declares" in out and "ckpt.json: ckpt/tiny-gpt/tp9pp1/none[cpu]" in out
    assert "elsewhere" not in out.split("stale")[1]  # a suite not loaded is not judged
    assert main([*argv, "--prune"]) == 0
    assert "1 stale entry removed" in capsys.readouterr().out
    for name in ("ckpt.json", "ckpt.noise.json"):
        kept = json.loads((folder / name).read_text())["cases"]
        assert "ckpt/tiny-gpt/tp9pp1/none[cpu]" not in kept and len(kept) > 5
    assert "elsewhere/x" in json.loads((folder / "elsewhere.json").read_text())["cases"]
    assert main(argv) == 0 and "stale" not in capsys.readouterr().out


def test_mt_bench_prompts_the_models_tokenizer_cannot_read_are_refused_before_start(
    tmp_path: Path, write_suite, capsys
) -> None:
    """Real MT-Bench English through a zoo model's word tokenizer is all <unk>: said at load, not in a traceback."""
    questions = tmp_path / "question.jsonl"
    rows = [{"question_id": 81, "category": "writing", "turns": ["Compose an engaging travel blog post"]}]
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = write_suite(
        f"suite: s\ncheck: spec_decode\nparams: {{prompts: {questions}, train_steps: 0}}\n"
        "matrix:\n  model: [tiny-gpt-trained]\n",
        "s.yaml",
    )
    assert main(["run", str(spec), "--artifacts", str(tmp_path / "artifacts")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"s.yaml:3: params.prompts: {questions}: 1 of 1 prompts are mostly tokens the tokenizer does not know" in err
    assert "question 81 (writing): 100% unknown tokens" in err and "Traceback" not in err
    questions.write_text(json.dumps(rows[0] | {"turns": ["w1 w2 w3"]}) + "\n")  # the corpus's own words
    assert main(["list", str(spec)]) == 0


def test_list_into_a_reader_that_stops_early_is_no_traceback() -> None:
    """`harness list | head -1`: the closed pipe ends the listing quietly."""
    import subprocess
    import sys

    listing = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "list"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert listing.stdout is not None and listing.stdout.readline()
    listing.stdout.close()  # what head does after its line
    _, err = listing.communicate(timeout=120)
    assert listing.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err
