"""PneumoScope core library: data, model, training, evaluation, Grad-CAM, registry.

Never imports streamlit; the app in app_pages/ is a thin layer over this package.
"""

__version__ = "0.1.0"
