# JupyterLab settings of this project (`make lab` passes this file with --config).
import os
from pathlib import Path

c = get_config()  # noqa: F821  (provided by Jupyter when it loads this file)

# The try-your-own-image widget (vfu_nb.widgets) sends an uploaded file to the kernel in one websocket message.
# tornado's default limit is 10 MiB and a larger message drops the connection; at 64 MiB a file above the
# widget's own limit (8 MiB) reaches the kernel and gets the widget's message instead.
c.ServerApp.tornado_settings = {"websocket_max_message_size": 64 * 2**20}

# JupyterLab's defaults for this project, from jupyter/labconfig/default_setting_overrides.json: no "Would you like
# to get notified about official Jupyter news?" prompt on every first visit (the notification plugin's fetchNews
# "false", and no update check). jupyterlab_server reads default_setting_overrides.json from the labconfig folder
# of every Jupyter config path, so the folder goes on JUPYTER_CONFIG_PATH (before any the user gave; the user's own
# ~/.jupyter/labconfig and their saved settings still win).
_here = str(Path(__file__).resolve().parent / "jupyter")
os.environ["JUPYTER_CONFIG_PATH"] = os.pathsep.join(p for p in (_here, os.environ.get("JUPYTER_CONFIG_PATH")) if p)
