"""results.json: one machine-readable, schema-validated file per study."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

import tokenred
from tokenred.results import RunStore, SampleRecord, record_problem
from tokenred.results_json import RESULTS_FILE, SCHEMA_PATH, load_schema


def validator() -> jsonschema.protocols.Validator:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.FormatChecker()
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("runs")
    tokenred.run(
        reducer="random",
        budget=0.5,
        overrides=["data.limit=3", f"output.root={root}", "name=rj"],
    )
    path = root / "rj" / RESULTS_FILE
    return path, json.loads(path.read_text())


def test_results_json_validates_against_its_schema(study):
    _, doc = study
    validator().validate(doc)
    assert doc["schema_version"] == 1 and doc["study"] == "rj"
    assert [r["method"] for r in doc["runs"]] == ["unreduced", "random (K=1)"]


def test_every_run_has_config_controls_metrics_and_costs(study):
    path, doc = study
    base, red = doc["runs"]
    assert (path.parent / red["path"] / RunStore.SAMPLES).is_file()
    assert red["config"]["reducer"]["name"] == "random"
    assert red["config"]["budget"]["ratio"] == 0.5
    assert red["controls"]["seed"] == 0 and red["controls"]["model_weights"]
    assert red["controls"]["measure"]["flops"] is True
    assert red["samples"] == {"total": 3, "ok": 3, "errors": 0}
    assert red["metrics"]["accuracy"] == red["accuracy"]["accuracy"]
    assert red["costs"]["kept_tokens"] == base["costs"]["kept_tokens"] / 2
    assert 0 < red["costs"]["flops_prefill"] < base["costs"]["flops_prefill"]
    assert base["relative"]["rel_flops"] == pytest.approx(100)


def test_schema_rejects_what_it_does_not_describe(study):
    _, doc = study
    check = validator()
    for mutate in (
        lambda d: d.pop("runs"),
        lambda d: d["runs"][0]["costs"].update(flops_prefill="many"),
        lambda d: d["runs"][0].pop("controls"),
        lambda d: d["runs"][1]["samples"].update(errors=-1),
        lambda d: d.update(schema_version=2),
    ):
        bad = copy.deepcopy(doc)
        mutate(bad)
        assert not check.is_valid(bad)


def test_per_sample_logs_keep_prompt_options_text_and_answers(study):
    path, doc = study
    store = RunStore(path.parent / doc["runs"][1]["path"])
    record = store.records()[0]
    assert record.prompt and "A. " in record.prompt
    assert record.options and len(record.options) >= 2
    assert all(opt in record.prompt for opt in record.options)
    assert record.text and record.prediction and record.answer


def test_records_without_prompt_still_read():
    old = SampleRecord(id="a", text="B").to_dict()
    del old["prompt"], old["options"]
    assert record_problem(old) is None
    back = SampleRecord.from_dict(old)
    assert back.prompt is None and back.options is None and "_extra" not in back.meta
    assert record_problem({**old, "prompt": 3}) is not None


def test_schema_ships_in_the_package():
    assert SCHEMA_PATH.parent.name == "schemas" and SCHEMA_PATH.is_file()
