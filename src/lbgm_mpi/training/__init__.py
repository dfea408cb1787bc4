"""The federated training loop: local client updates, the exchange, the server step."""
