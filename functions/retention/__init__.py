"""The retention function: the scheduled prune of the policy tables (`retention.app`)."""
