# JupyterLab settings of this project (`make lab` passes this file with --config).
c = get_config()  # noqa: F821  (provided by Jupyter when it loads this file)

# The try-your-own-image widget (vfu_nb.widgets) sends an uploaded file to the kernel in one websocket message.
# tornado's default limit is 10 MiB and a larger message drops the connection; at 64 MiB a file above the
# widget's own limit (8 MiB) reaches the kernel and gets the widget's message instead.
c.ServerApp.tornado_settings = {"websocket_max_message_size": 64 * 2**20}
