"""The live demo page (issue 15) driven in a real headless Chromium: a closed-loop run, a replay of a recorded
store, and bad inputs that must show one line, never a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import record_oracle_store

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PLAN_LINE = re.compile(r"^(\d+)\. ([✓✗]) (.+?)(?:  \((.*)\))?$")
EPISODE_S = 120_000  # ms: a whole episode on a busy 2-core machine

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    sync_playwright = None

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(sync_playwright is None, reason="no playwright package (pip install -e .[test])"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no {CHROMIUM} (apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(*args: str):
    """``python -m embodied_lm.demo ARGS`` on a free port; yields its URL once the page answers."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "embodied_lm.demo", *args, f"port={port}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"demo exited {proc.returncode}: {proc.stdout.read()[-2000:]}"
            assert time.monotonic() < deadline, "demo did not serve within 90 s"
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def oracle_url():
    with serve("planner=oracle") as url:
        yield url


def open_page(browser, url: str):
    """A fresh page, and the list of every URL it requests (the demo must need nothing off this machine)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(url)
    expect(page.locator("#run")).to_be_visible(timeout=30_000)
    return page, requested


def choose(page, elem: str, value: str) -> None:
    """Pick ``value`` in a Gradio dropdown as a user does: open it, click the option."""
    page.locator(f"#{elem} input").click()
    page.get_by_role("option", name=value, exact=True).click()
    expect(page.locator(f"#{elem} input")).to_have_value(value)


def plan_lines(page, elem: str) -> list[re.Match]:
    text = page.locator(f"#{elem} textarea").input_value()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    matches = [PLAN_LINE.match(ln) for ln in lines]
    assert all(matches), f"malformed plan lines: {lines}"
    assert [int(m.group(1)) for m in matches] == list(range(1, len(lines) + 1))
    return matches


def finished(page, elem: str) -> str:
    """The verdict line once the episode has ended."""
    expect(page.locator(f"#{elem}")).to_contain_text(re.compile("✓ success|✗ failed"), timeout=EPISODE_S)
    return page.locator(f"#{elem}").inner_text()


def assert_local(requested: list[str], url: str) -> None:
    outside = [u for u in requested if not u.startswith((url, "data:", "blob:"))]
    assert not outside, f"the page fetched from outside the demo server: {outside[:5]}"


def test_live_run_plan_and_success(browser, oracle_url, tmp_path):
    page, requested = open_page(browser, oracle_url)
    page.locator("#seed input").fill("1000003")
    page.locator("#show").click()
    own = page.locator("#instruction textarea")
    expect(own).not_to_have_value("", timeout=30_000)  # the scene's own instruction, to edit
    assert "ready" in page.locator("#status").inner_text()
    typed = "Please: " + own.input_value()  # a typed instruction (the oracle acts on the scene's task)
    own.fill(typed)
    page.locator("#run").click()
    verdict = finished(page, "status")
    assert "✓ success" in verdict and "p2_stack L1, seed 1000003" in verdict
    steps = plan_lines(page, "plan")
    assert len(steps) >= 3 and all(m.group(2) == "✓" for m in steps), [m.group(0) for m in steps]
    assert steps[0].group(3).startswith("pick ") and steps[-1].group(3) == "done"
    assert f"in {len(steps)} steps" in verdict
    expect(page.locator("#frame img")).to_be_visible()
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    if os.environ.get("DEMO_SCREENSHOT"):  # the README's picture: DEMO_SCREENSHOT=PATH pytest ...
        shutil.copyfile(shot, os.environ["DEMO_SCREENSHOT"])
    assert_local(requested, oracle_url)
    page.close()


def test_replay_recorded_episode(browser, oracle_url, tmp_path):
    from embodied_lm.datasets import ReplayReader

    store = record_oracle_store(tmp_path, ["p1_grasp"])
    ep = ReplayReader(store).episode(0)
    page, _ = open_page(browser, oracle_url)
    page.get_by_role("tab", name="Replay a store").click()
    page.locator("#store textarea").fill(str(store))
    page.locator("#episode input").fill("0")
    page.locator("#replay").click()
    verdict = finished(page, "replay_status")
    steps = plan_lines(page, "replay_plan")
    assert [m.group(3) for m in steps] == str(ep.meta["plan"]).split("\n")
    assert [m.group(2) == "✓" for m in steps] == [bool(x) for x in ep.data["skill_success"]]
    assert ("✓ success" in verdict) == bool(ep.meta["success"]) and "p1_grasp" in verdict
    expect(page.locator("#replay_frame img")).to_be_visible()
    for index, store_path, why in ((5, store, "episode index 5 out of range for 1 episodes"),
                                   (0, tmp_path / "nothing.zarr", "nothing.zarr")):
        page.locator("#store textarea").fill(str(store_path))
        page.locator("#episode input").fill(str(index))
        page.locator("#replay").click()
        expect(page.locator("#replay_status")).to_contain_text(why, timeout=30_000)
        assert page.locator("#replay_status").inner_text().startswith("error: ")
    assert "Traceback" not in page.content()
    page.close()


def _absent_colour(spec: dict) -> str:
    """A colour the spec's scene does not hold, read from the scene itself."""
    from sim.env import EnvConfig, TabletopEnv
    from skills.vocab import COLOR_NAMES, Col

    env = TabletopEnv(EnvConfig(observe_images=False))
    try:
        objects, _ = env.reset(options={"spec": spec})
        objects = objects["objects"]
    finally:
        env.close()
    held = {COLOR_NAMES[int(row[Col.COLOR])] for row in objects if row[Col.PRESENT] > 0.5}
    return next(c for c in COLOR_NAMES if c not in held)


def test_bad_inputs_show_one_line(browser, oracle_url):
    spec = {"task": "p1_grasp", "params": {"target": "red"}, "n_objects": 3, "seed": 5, "level": "L1"}
    missing = _absent_colour(spec)
    page, _ = open_page(browser, oracle_url)
    cases = [  # (spec line, instruction, what the message must say)
        ('{"task": "p2_stack", "params": ', "", "spec line is not valid JSON"),
        (json.dumps(spec | {"task": "juggle"}), "", "unknown task family 'juggle'"),
        (json.dumps(spec), f"Pick up the {missing} block.", f"the scene holds no {missing} block"),
        (json.dumps(spec), "Pick up obj_7.", "the instruction names obj_7 but the scene holds obj_1"),
    ]
    for line, instruction, why in cases:
        page.locator("#spec_line textarea").fill(line)
        page.locator("#instruction textarea").fill(instruction)
        page.locator("#run").click()
        expect(page.locator("#status")).to_contain_text(why, timeout=30_000)
        status = page.locator("#status").inner_text().strip()
        assert status.startswith("error: ") and "\n" not in status, status
        assert page.locator("#plan textarea").input_value() == ""
    page.locator("#spec_line textarea").fill("")  # the picker: a family without level L4
    page.locator("#instruction textarea").fill("")
    choose(page, "family", "q1_color")
    choose(page, "level", "L4")
    page.locator("#run").click()
    expect(page.locator("#status")).to_contain_text("q1_color has no level L4", timeout=30_000)
    assert "Traceback" not in page.content()
    page.close()


def test_bad_checkpoint_exits_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "embodied_lm.demo", f"checkpoint={tmp_path / 'none'}"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {tmp_path / 'none'}: not a checkpoint (needs model.safetensors, " \
                                 "config.json, state.json)"


def test_lm_planner_path(browser, tmp_path):
    """A tiny random-weights checkpoint: the page loads it and shows the steps it decodes."""
    import torch

    from embodied_lm.model import EmbodiedLM, ModelConfig
    from embodied_lm.train import TrainConfig, save_checkpoint
    from skills import parse

    model = EmbodiedLM(ModelConfig(backbone="tiny", sensors="state", mode="full"), seed=0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    save_checkpoint(model, opt, TrainConfig(), {"step": 0}, tmp_path / "ck")
    del model, opt
    spec = {"task": "q1_color", "params": {"target": "red"}, "n_objects": 3, "seed": 7, "level": "L1"}
    with serve(f"checkpoint={tmp_path / 'ck'}") as url:
        page, requested = open_page(browser, url)
        expect(page.locator("body")).to_contain_text("Planner: embodied_lm")
        page.locator("#spec_line textarea").fill(json.dumps(spec))
        page.locator("#run").click()
        verdict = finished(page, "status")
        steps = plan_lines(page, "plan")
        assert steps and f"in {len(steps)} step" in verdict and "q1_color L1, seed 7" in verdict
        for m in steps:  # random weights, constrained decoding: well-formed calls, whatever they are
            parse(m.group(3))
        assert_local(requested, url)
        page.close()
