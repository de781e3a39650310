"""``python -m fabric ...`` is the ``fabric`` command."""

from fabric.cli import app

app(prog_name="fabric")
