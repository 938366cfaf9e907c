"""clockfleet: NTP server lists and time zones for a whole fleet, managed from the centre."""

__version__ = "0.1.0"
