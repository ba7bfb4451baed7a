"""Entry point: ``python experiments/run.py task=tabletop planner=oracle eval.episodes=20``.

Composes the Hydra config, validates it into typed dataclasses and dispatches to
``embodied_lm.pipeline``.  Bad overrides and bad inputs end with a one-line ``error:``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from embodied_lm.config import register_configs  # noqa: E402

register_configs()  # the RunConfig schema that conf/config.yaml composes on

CONF = str(Path(__file__).resolve().parent / "conf")
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def check_overrides(argv: list[str]) -> None:
    """Compose once up front so a bad override is one line, not a Hydra report."""
    if any(a in ("-m", "--multirun", "--help", "-h", "--hydra-help", "--cfg", "-c", "--info") for a in argv):
        return
    from hydra import compose, initialize_config_dir

    overrides = [a for a in argv if not a.startswith(("hydra.", "+hydra.", "--"))]
    try:
        with initialize_config_dir(config_dir=CONF, version_base=None):
            compose(config_name="config", overrides=overrides)
    except Exception as e:  # hydra raises several types; all are the user's override
        fail(str(e).strip().splitlines()[0])


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from embodied_lm.config import load_run_config
    from embodied_lm.pipeline import Interrupted, run

    try:
        run_cfg = load_run_config(cfg)
        path = run(run_cfg, OmegaConf.to_container(cfg, resolve=True), HydraConfig.get().runtime.output_dir)
    except USER_ERRORS as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(130)  # the shell's code for SIGINT
    print(path)


if __name__ == "__main__":
    try:
        check_overrides(sys.argv[1:])
        main()
    except KeyboardInterrupt:  # before the pipeline started: nothing was written
        print("interrupted; kept: nothing", file=sys.stderr)
        sys.exit(130)
