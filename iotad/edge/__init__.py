"""What runs on a device between rounds: the agent and torch-free inference (never imports torch or flwr)."""
