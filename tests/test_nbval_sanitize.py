"""The nbval sanitizer (tests/nbval_sanitize.cfg) hides what legitimately differs between checkouts and nothing else.

A committed notebook output that names the checkout's location must compare equal wherever CI clones the
project (this once failed on a CI machine whose checkout lived under /check/...)."""

import configparser
import re
from pathlib import Path

CFG = Path(__file__).with_name("nbval_sanitize.cfg")


def sanitize(text: str) -> str:
    cfg = configparser.ConfigParser()
    cfg.read(CFG)
    for section in cfg.sections():
        text = re.sub(cfg[section]["regex"], cfg[section]["replace"], text)
    return text


def test_checkout_locations_compare_equal():
    line = "{}/flownar/train_report.py:100: UserWarning: something\n"
    roots = ["/work/main", "/tmp/ci-check", "/check/work/main", "/home/me/src/flownar", "/opt/ci/build-7"]
    assert len({sanitize(line.format(r)) for r in roots}) == 1
    assert sanitize(line.format("/check/work/main")) == "<PATH> UserWarning: something\n"
    assert sanitize("videollm-online  52.0 s  -> /srv/x/runs/ek100/smoke/videollm-online\n").endswith("-> <PATH>\n")


def test_results_and_relative_paths_are_still_compared():
    for text in (
        "wrote paper_figures/ek100/smoke/fig_training_loss.png",
        "P/R/F1 77.64 / 83.52 / 79.16",
        "566.9 frames/s, 1580/1580 steps",
        "see https://github.com/zeyun-zhong/FlowNar for the original",
    ):
        assert sanitize(text) == text
    assert sanitize("F1 79.16") != sanitize("F1 79.17")
