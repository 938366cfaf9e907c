"""The SNTP client shared by the agent's probe and the publisher's preflight (and nothing else)."""
