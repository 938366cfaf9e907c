"""The broker tests use the suite's `broker` fixture (tests/conftest.py): Mosquitto from
broker/mosquitto.conf, identities, ACL, TLS listener, no anonymous access."""
