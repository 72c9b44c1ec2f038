"""The README stays true: its settings table is the one generated from `dc.config.Settings`."""

import re

from dc.config import settings_markdown
from tests.conftest import REPO


def test_readme_settings_table_matches_the_settings_class():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", readme, re.S)
    assert match, "README.md lacks the <!-- settings:start/end --> block"
    assert match.group(1).strip() == settings_markdown(), (
        "README settings table is stale: paste the output of "
        "`python -c 'from dc.config import settings_markdown; print(settings_markdown())'`"
    )
