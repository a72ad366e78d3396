"""What both example gateways share: settings, the built-in model, the upstream client, the demo."""
