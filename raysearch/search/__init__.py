"""Ray Tune + Optuna: the trial function, resources, and the Tuner that runs a study."""
