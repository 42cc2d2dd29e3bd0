"""The broker's domain: who to ring, when, who won. No sockets in here."""
