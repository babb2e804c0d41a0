"""Sphinx configuration of the voicepipe documentation (MyST Markdown, the Furo theme).

Build: `sphinx-build -W -b html docs docs/_build/html` (warnings are errors, as in CI).
"""

project = "voicepipe"
author = "the voicepipe developers"
extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
html_theme = "furo"
html_title = "voicepipe"
exclude_patterns = ["_build", "reference.py"]
