"""The load-test kit without servers or JMeter: the JTL summary script, the JMeter plan's shape."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUMMARY = REPO / "scripts" / "loadtest_summary.py"
PLAN = REPO / "bench" / "jmeter" / "predict.jmx"
HEADER = "timeStamp,elapsed,label,responseCode,responseMessage,threadName,dataType,success,bytes"


def _load_summary_module():
    """scripts/ is not a package: load loadtest_summary.py by path."""
    spec = importlib.util.spec_from_file_location("loadtest_summary", SUMMARY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


summary = _load_summary_module()


def write_jtl(path: Path, failures: int = 0) -> Path:
    """100 banking77 samples of 1..100 ms, one per 10 ms, and 10 clinc150 ones of 5 ms."""
    lines = [HEADER]
    for i in range(100):
        ok = "false" if i < failures else "true"
        code = "500" if i < failures else "200"
        lines.append(
            f"{1000 + 10 * i},{i + 1},POST /predict/banking77,{code},OK,banking77 1-{i % 4 + 1},"
            f"text,{ok},700"
        )
    for i in range(10):
        lines.append(f"{1000 + 10 * i},5,POST /predict/clinc150,200,OK,clinc150 2-1,text,true,700")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_summary(*args) -> subprocess.CompletedProcess:
    """Run the script as make loadtest does."""
    return subprocess.run(
        [sys.executable, str(SUMMARY), *map(str, args)], capture_output=True, text=True, timeout=30
    )


def test_percentile_interpolates_like_numpy():
    values = [float(v) for v in range(1, 101)]
    assert summary.percentile(values, 50) == pytest.approx(50.5)
    assert summary.percentile(values, 95) == pytest.approx(95.05)
    assert summary.percentile(values, 99) == pytest.approx(99.01)
    assert summary.percentile([7.0], 99) == 7.0


def test_thread_group_strips_jmeter_thread_numbers():
    assert summary.thread_group("banking77 1-3") == "banking77"
    assert summary.thread_group("my group 2-10") == "my group"


def test_summary_without_errors(tmp_path):
    jtl = write_jtl(tmp_path / "results.jtl")
    result = run_summary(jtl, "--out-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "summary.json").read_text())
    overall = report["overall"]
    assert overall["requests"] == 110
    assert overall["errors"] == 0
    # first start 1000 ms, last end 1000 + 990 + 100 = 2090 ms: 110 samples in 1.09 s
    assert overall["duration_s"] == pytest.approx(1.09)
    assert overall["throughput_rps"] == pytest.approx(110 / 1.09, rel=1e-3)
    banking = report["by_label"]["POST /predict/banking77"]["latency_ms"]
    assert (banking["p50"], banking["p95"], banking["p99"]) == (50.5, 95.0, 99.0)
    assert report["by_label"]["POST /predict/clinc150"]["latency_ms"]["p99"] == 5.0
    assert set(report["by_thread_group"]) == {"banking77", "clinc150"}
    markdown = (tmp_path / "summary.md").read_text()
    assert "| overall | 110 |" in markdown
    assert "group banking77" in markdown


def test_summary_counts_errors_and_exits_1(tmp_path):
    jtl = write_jtl(tmp_path / "results.jtl", failures=3)
    result = run_summary(jtl, "--out-dir", tmp_path)
    assert result.returncode == 1
    report = json.loads((tmp_path / "summary.json").read_text())
    assert report["overall"]["errors"] == 3
    assert report["overall"]["error_rate"] == pytest.approx(3 / 110, abs=1e-6)
    assert report["overall"]["error_codes"] == {"500": 3}
    assert report["by_thread_group"]["clinc150"]["errors"] == 0


@pytest.mark.parametrize("content", [None, "", "a,b,c\n1,2,3\n", HEADER + "\n"])
def test_summary_rejects_missing_or_bad_jtl(tmp_path, content):
    jtl = tmp_path / "results.jtl"
    if content is not None:
        jtl.write_text(content)
    result = run_summary(jtl, "--out-dir", tmp_path)
    assert result.returncode == 2
    assert "loadtest_summary:" in result.stderr


def test_summary_help_explains():
    result = run_summary("--help")
    assert result.returncode == 0
    assert "p50/p95/p99" in result.stdout and "Exit" in result.stdout


def _props(element: ET.Element) -> dict[str, str]:
    """The direct stringProp/boolProp/intProp children of a JMeter element, by name."""
    return {p.get("name"): (p.text or "") for p in element if p.tag.endswith("Prop")}


def test_jmeter_plan_shape():
    root = ET.parse(PLAN).getroot()
    assert root.tag == "jmeterTestPlan"
    groups = root.findall(".//ThreadGroup")
    assert sorted(g.get("testname") for g in groups) == ["banking77", "clinc150"]

    datasets = root.findall(".//CSVDataSet")
    assert len(datasets) == 2
    for ds in datasets:
        props = _props(ds)
        assert props["delimiter"] == "\\t"
        assert props["variableNames"] == "model,body"
        assert props["recycle"] == "true"

    samplers = root.findall(".//HTTPSamplerProxy")
    assert len(samplers) == 2
    for sampler in samplers:
        props = _props(sampler)
        assert props["HTTPSampler.path"] == "/predict/${model}"
        assert props["HTTPSampler.method"] == "POST"
        assert props["HTTPSampler.postBodyRaw"] == "true"
        assert "${body}" in ET.tostring(sampler, encoding="unicode")

    headers = ET.tostring(root.find(".//HeaderManager"), encoding="unicode")
    assert "Content-Type" in headers and "application/json" in headers
    assertions = [ET.tostring(a, encoding="unicode") for a in root.findall(".//ResponseAssertion")]
    assert any("Assertion.response_code" in a and ">200<" in a for a in assertions)
    assert any("Assertion.response_data" in a and "&quot;label&quot;" in a for a in assertions)

    text = PLAN.read_text()
    for prop in ("host,127.0.0.1", "port,8000", "threads,", "duration,", "requests,", "rampup,"):
        assert "${__P(" + prop in text
