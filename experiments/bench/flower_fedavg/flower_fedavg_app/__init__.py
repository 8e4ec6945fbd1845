"""Stock Flower FedAvg with a minimal ClientApp on fedsim's rotated-digits task (the `fedsim bench` baseline)."""
