"""Channel connectors: one module per platform, each a ChannelSender."""
