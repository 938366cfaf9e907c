"""The wire contract shared by publisher, agent and collector (and nothing else)."""
