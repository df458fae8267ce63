"""JUnit XML of a run for CI systems that read it (pytest writes its own inside pytest; this is the
CLI's). Known-defect cases that fail as declared are reported as skipped, the way pytest reports
xfail; a known defect that stopped showing (xpass) is a failure."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from harness.atomic import write_text_atomic
from harness.records import CaseResult, Verdict


def junit_xml(results: list[CaseResult]) -> str:
    suites = ET.Element("testsuites")
    by_suite: dict[str, list[CaseResult]] = {}
    for result in results:
        by_suite.setdefault(result.case.suite, []).append(result)
    for name, members in by_suite.items():
        failures = sum(r.verdict in (Verdict.FAIL, Verdict.XPASS, Verdict.NO_BASELINE) for r in members)
        errors = sum(r.verdict is Verdict.ERROR for r in members)
        skipped = sum(r.verdict in (Verdict.SKIPPED, Verdict.XFAIL) for r in members)
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=name,
            tests=str(len(members)),
            failures=str(failures),
            errors=str(errors),
            skipped=str(skipped),
            time=f"{sum(r.outcome.duration_s for r in members):.3f}",
        )
        for result in members:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"{name}.{result.case.platform}",
                name=result.case.id,
                time=f"{result.outcome.duration_s:.3f}",
            )
            verdict = result.verdict
            if verdict in (Verdict.FAIL, Verdict.XPASS, Verdict.NO_BASELINE):
                ET.SubElement(case, "failure", message=verdict.value).text = result.message()
            elif verdict is Verdict.ERROR:
                ET.SubElement(case, "error", message="error").text = result.message()
            elif verdict in (Verdict.SKIPPED, Verdict.XFAIL):
                ET.SubElement(case, "skipped", message=result.message().splitlines()[0])
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)


def write_junit(path: Path, results: list[CaseResult]) -> None:
    write_text_atomic(path, junit_xml(results))
