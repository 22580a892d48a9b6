"""The two kinds of error of the sans-IO core (after h11)."""


class ProtocolError(Exception):
    """Base of the engine's errors."""


class RemoteProtocolError(ProtocolError):
    """A peer sent bytes that are not a valid Babel packet: count them and drop them."""


class LocalProtocolError(ProtocolError):
    """The caller misused the engine: a bug on our side, never caused by the network."""
