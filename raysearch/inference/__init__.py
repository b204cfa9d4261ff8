"""Trained models in use: restoring a trial's network, predicting, exporting, drawing overlays."""
