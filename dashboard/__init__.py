"""The Streamlit dashboard (`raysearch dashboard`): `app.py` and its pages read a results folder; `logic.py` holds what
they compute without Streamlit. The core of raysearch never imports this package."""
