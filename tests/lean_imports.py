"""A pytest plugin loaded before the installed ones (``-p lean_imports`` in pyproject.toml's ``addopts``; its
``pythonpath`` puts tests/ on sys.path first).

nbval imports nbformat, nbformat imports jsonschema, and jsonschema, when the optional package rfc3987-syntax is
installed (jupyter-events installs it), builds a Lark parser for its "iri" format check at import: about 2.7 s of
CPU at every pytest start, a third of all import time. No test validates an IRI, so the tests leave it out and
jsonschema skips that one check. Subprocesses (papermill, JupyterLab) are not affected.
"""

import sys

sys.modules.setdefault("rfc3987_syntax", None)     # `import rfc3987_syntax` now raises ImportError
