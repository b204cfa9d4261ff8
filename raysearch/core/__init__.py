"""What every layer shares: the study folder's layout, its column names and ranking rule, typed hyperparameters,
atomic writes and the device choice."""
