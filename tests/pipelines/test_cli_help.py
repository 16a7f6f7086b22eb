"""`sisa VERB --help` and `sisa --version` as a user reads them."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
from sisa.pipelines.cli import VERBS, main, missing_extra


def _help(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main(list(argv))
    return exit_.value.code, out.getvalue()


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_each_verbs_usage_line_names_the_verb_once(verb: str) -> None:
    code, out = _help(verb, "--help")
    assert code == 0
    usage = out.split("\n\n", 1)[0]  # the usage paragraph, however argparse wrapped it
    assert usage.startswith(f"usage: sisa {verb} [-h] [--config FILE] [--json]"), usage
    assert usage.rstrip().endswith("[key.sub=value ...]"), usage
    words = re.findall(r"[\w-]+", usage)
    assert words.count("sisa") == 1 and "VERB" not in words and "options" not in words, usage


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    code, out = _help("--version")
    assert code == 0 and out.strip() == f"sisa {version('sisa')}"


def test_a_missing_extra_says_what_to_install(capsys) -> None:
    assert missing_extra("serve", ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")) == 2
    assert "pip install 'sisa[serve]'" in capsys.readouterr().err
    with pytest.raises(ModuleNotFoundError):  # not an extra's: our bug, raised as it is
        missing_extra("train", ModuleNotFoundError("No module named 'peft'", name="peft"))
