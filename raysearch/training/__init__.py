"""The one training loop shared by every task, and the sessions that connect it to Ray."""
