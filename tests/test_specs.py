"""Episode spec files: replayable round trip, and every error rejected with its line number."""

import json

import pytest

from sim.tasks import SpecError, generate_specs, load_specs, save_specs

GOOD = {"task": "p2_stack", "params": {"order": ["red", "blue", "green"]}, "n_objects": 5, "seed": 17}


def test_round_trip(tmp_path):
    specs = generate_specs(episodes=2, seed=5)
    path = tmp_path / "specs.jsonl"
    save_specs(specs, path)
    assert load_specs(path) == specs


@pytest.mark.parametrize("bad,why", [
    ({**GOOD, "task": "p9_fly"}, "unknown task family 'p9_fly'"),
    ({**GOOD, "params": {"order": ["red", "mauve"]}}, "order[1]='mauve' is not a colour"),
    ({**GOOD, "params": {"order": ["red", "blue"], "speed": 3}}, "unknown param(s) ['speed']"),
    ({**GOOD, "params": {}}, "missing param(s) ['order']"),
    ({**GOOD, "n_objects": 2}, "n_objects=2 is too small"),
    ({**GOOD, "params": {"order": ["red", "red"]}}, "must be distinct"),
    ({**GOOD, "refer": "pointing"}, "refer must be one of"),
    ({**GOOD, "level": "L9"}, "level must be one of"),
    ({**GOOD, "seed": -1}, "seed must be a non-negative integer"),
    ({**GOOD, "colour": "red"}, "unknown field(s) ['colour']"),
    ({"task": "p1_grasp", "params": {"target": "red"}, "seed": 1}, "missing field 'n_objects'"),
    ({"task": "bowl_place", "params": {"block": "red", "bowl": "blue"}, "n_objects": 2, "seed": 1}, "3..10"),
    ({"task": "push_sort_corners", "params": {"corners": {"red": "middle"}}, "n_objects": 4, "seed": 1},
     "is not one of"),
    ({"task": "q3_on_object", "params": {"top": "red"}, "n_objects": 4, "seed": 1}, "missing param(s) ['bottom']"),
])
def test_bad_line_rejected_with_line_number(tmp_path, bad, why):
    path = tmp_path / "specs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(SpecError) as e:
        load_specs(path)
    assert f"{path}:3:" in str(e.value) and why in str(e.value)


def test_not_json_and_empty_and_missing(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"task": "p1_grasp",\n')
    with pytest.raises(SpecError, match=r"s.jsonl:1: not valid JSON"):
        load_specs(path)
    path.write_text("# only a comment\n")
    with pytest.raises(SpecError, match="no episode specs"):
        load_specs(path)
    with pytest.raises(SpecError, match="not found"):
        load_specs(tmp_path / "missing.jsonl")
